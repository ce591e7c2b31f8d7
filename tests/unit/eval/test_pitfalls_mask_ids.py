"""Spec §9.1 / §10: the student mask id is read from the tokenizer, never hard-coded (it is expected to be
151669, but only the checkpoint's tokenizer can say). See docs/PITFALLS.md."""

import argparse
import io
import tokenize
from pathlib import Path

import pytest

import tide_megatron
from tide_megatron.cli.evaluate import _special_ids

STUDENT_MASK_ID = 151669  # what Qwen3 + <|mask|> gives; must never appear as a literal in the code


def _tokenizer(mask_token):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {w: i for i, w in enumerate(["a", "b", "<|endoftext|>", "<|im_end|>", "c", "d", "e", "<|mask|>"])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="a"))
    kw = {"mask_token": mask_token} if mask_token else {}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>",
                                                eos_token="<|im_end|>", **kw)


def _args(mask_id=None):
    return argparse.Namespace(mask_id=mask_id, eos_id=None, pad_id=None)


def test_tide_eval_takes_the_mask_id_from_the_tokenizer():
    tok = _tokenizer("<|mask|>")
    assert _special_ids(_args(), tok) == (7, 3, 2)
    assert _special_ids(_args(mask_id=5), tok)[0] == 5  # an explicit --mask-id wins
    with pytest.raises(SystemExit, match="no mask token; pass --mask-id"):
        _special_ids(_args(), _tokenizer(None))


def test_no_module_hard_codes_the_student_mask_id():
    """Scan every number literal (not comments or strings) in the package for 151669."""
    root = Path(tide_megatron.__file__).parent
    hits = []
    for path in sorted(root.rglob("*.py")):
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.NUMBER and tok.string.replace("_", "") == str(STUDENT_MASK_ID):
                hits.append(f"{path.relative_to(root)}:{tok.start[0]}")
    assert not hits, f"student mask id hard-coded at {hits}; read it from the tokenizer (spec §1.1, §10)"
