"""Spec §9.1 / issue 13: a dataset written with another tokenizer is refused at start-up, before any model is
built, by the tokenizers' content fingerprints recorded at preprocessing time (real tokenizers, real text)."""

import json
import re

import pytest

from tide_megatron.config import ConfigError, config_from_dict
from tide_megatron.data.compatibility import fingerprint_of, same_tokenizer, tokenizer_fingerprint
from tide_megatron.data.preprocess import preprocess
from tide_megatron.data.samples import SampleConfig
from tide_megatron.data.stdlib_snippets import stdlib_snippets

FP = "[0-9a-f]{16}"


@pytest.fixture(scope="module")
def setup(tok, tmp_path_factory):
    """A chunks dataset written with student qwen2 / teacher llama-spm, and tokenizer copies in other folders."""
    root = tmp_path_factory.mktemp("compat")
    src = root / "in.jsonl"
    src.write_text("\n".join(json.dumps({"messages": c["messages"]}) for c in stdlib_snippets(6, seed=3)))
    preprocess([src], root / "ds", SampleConfig(student_tokenizer="qwen2", teacher_tokenizer="llama-spm",
                                                student_template="qwen3", teacher_template="llada2",
                                                student_max_len=256, teacher_max_len=400), progress=False)
    for name in ("qwen2", "llama-spm", "gpt-2"):
        tok(name).hf.save_pretrained(str(root / f"copy-{name}"))
    for d in ("student", "teacher"):
        (root / d).mkdir()
    return root


def _config(root, student_tokenizer):
    return config_from_dict({
        "preset": "a_tide_cross", "output_dir": str(root / "out"),
        "student": {"checkpoint": str(root / "student"), "tokenizer": str(student_tokenizer), "seq_length": 256},
        "teacher": {"checkpoint": str(root / "teacher"), "tokenizer": str(root / "copy-llama-spm")},
        "data": {"train": str(root / "ds")}})


def test_preprocessing_records_both_content_fingerprints(setup, tok):
    meta = json.loads((setup / "ds" / "meta.json").read_text())
    assert meta["student"]["fingerprint"] == tokenizer_fingerprint(tok("qwen2"))
    assert meta["teacher"]["fingerprint"] == tokenizer_fingerprint(tok("llama-spm"))
    assert meta["student"]["fingerprint"] != meta["teacher"]["fingerprint"]


def test_the_same_tokenizer_through_another_path_is_accepted(setup):
    cfg = _config(setup, setup / "copy-qwen2")
    assert cfg.student.tokenizer == str(setup / "copy-qwen2")


def test_a_dataset_written_with_another_student_tokenizer_is_refused_naming_both(setup):
    other = setup / "copy-gpt-2"
    recorded = json.loads((setup / "ds" / "meta.json").read_text())["student"]["fingerprint"]
    with pytest.raises(ConfigError) as err:
        _config(setup, other)
    message = str(err.value)
    assert re.search(f"student.tokenizer: '{re.escape(str(other))}' \\(fingerprint {FP}\\) is not the tokenizer that "
                     f"wrote data.train '{re.escape(str(setup / 'ds'))}' \\('qwen2', fingerprint {recorded}\\)",
                     message), message
    assert fingerprint_of(str(other))[0] in message


def test_same_tokenizer_never_guesses_for_names_it_cannot_check(setup):
    assert same_tokenizer("qwen2", str(setup / "copy-qwen2")) is True  # a registry name, loaded and compared
    assert same_tokenizer("qwen2", "gpt-2") is False
    assert same_tokenizer("no-such-tokenizer", "gpt-2") is None  # unknown: not "the same"
