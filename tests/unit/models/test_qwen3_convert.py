"""tide-convert on tiny random transformers Qwen3 checkpoints: logits parity, exact round trip, bad input."""

import json
import os
import shutil

import pytest
import torch

from tide_megatron.cli.convert import main as tide_convert
from tide_megatron.models.qwen3.tiny import save_tiny_qwen3
from tide_megatron.models.safetensors_reader import SafetensorsReader


def _tensors(hf_dir):
    reader = SafetensorsReader(hf_dir)
    return {k: reader.get(k) for k in reader.keys()}


@pytest.fixture(scope="module", params=["tied_sharded", "untied_single"])
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    hf = str(root / "hf")
    if request.param == "tied_sharded":
        save_tiny_qwen3(hf, seed=1, max_shard_size="40KB")
        assert os.path.isfile(os.path.join(hf, "model.safetensors.index.json"))
    else:
        save_tiny_qwen3(hf, seed=2, tie_word_embeddings=False)
    mcore = str(root / "mcore")
    assert tide_convert(["hf-to-mcore", "--hf-dir", hf, "--mcore-dir", mcore]) == 0
    return hf, mcore, root


def test_megatron_logits_equal_transformers_under_both_masks(converted, capsys):
    from tide_megatron.cli.convert import run

    hf, mcore, _ = converted
    diffs = run(["verify", "--hf-dir", hf, "--mcore-dir", mcore, "--seq-length", "16", "--block-size", "4"])
    assert set(diffs) == {"causal", "block_diffusion"}
    assert max(diffs.values()) <= 1e-4, diffs
    printed = capsys.readouterr().out
    assert "causal: max abs logit difference" in printed and "block_diffusion: max abs logit difference" in printed


def test_megatron_to_hf_reproduces_every_tensor_exactly(converted):
    hf, mcore, root = converted
    back = str(root / "hf_back")
    assert tide_convert(["mcore-to-hf", "--mcore-dir", mcore, "--hf-dir", back, "--max-shard-mb", "1"]) == 0
    original, restored = _tensors(hf), _tensors(back)
    assert set(original) == set(restored)
    for key, tensor in original.items():
        assert restored[key].dtype == tensor.dtype and torch.equal(restored[key], tensor), key
    assert json.load(open(os.path.join(back, "config.json"))) == json.load(open(os.path.join(hf, "config.json")))


def _assert_clean_failure(capsys, argv, out_dir, *needles):
    assert tide_convert(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    for needle in needles:
        assert needle in err, err
    assert not os.path.exists(out_dir) and not os.path.exists(out_dir + ".tmp-partial")


@pytest.fixture()
def hf_copy(converted, tmp_path):
    dst = str(tmp_path / "hf")
    shutil.copytree(converted[0], dst)
    return dst


def _edit_config(hf_dir, **changes):
    path = os.path.join(hf_dir, "config.json")
    cfg = json.load(open(path))
    cfg.update(changes)
    json.dump(cfg, open(path, "w"))


def test_other_architecture_is_refused(hf_copy, tmp_path, capsys):
    _edit_config(hf_copy, model_type="llama", architectures=["LlamaForCausalLM"])
    out = str(tmp_path / "out")
    _assert_clean_failure(capsys, ["hf-to-mcore", "--hf-dir", hf_copy, "--mcore-dir", out], out,
                          "config.json", "'llama'")


def test_missing_shard_is_refused(hf_copy, tmp_path, capsys):
    index = os.path.join(hf_copy, "model.safetensors.index.json")
    if os.path.isfile(index):
        shard = sorted(set(json.load(open(index))["weight_map"].values()))[-1]
    else:
        shard = "model.safetensors"  # the single-file checkpoint's only weights file
    os.remove(os.path.join(hf_copy, shard))
    out = str(tmp_path / "out")
    _assert_clean_failure(capsys, ["hf-to-mcore", "--hf-dir", hf_copy, "--mcore-dir", out], out, shard)


def test_vocab_size_disagreeing_with_tokenizer_is_refused(hf_copy, tmp_path, capsys):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    Tokenizer(WordLevel({f"w{i}": i for i in range(200)}, unk_token="w0")).save(
        os.path.join(hf_copy, "tokenizer.json"))
    out = str(tmp_path / "out")
    _assert_clean_failure(capsys, ["hf-to-mcore", "--hf-dir", hf_copy, "--mcore-dir", out], out,
                          "tokenizer.json", "200", "vocab_size")


def test_vocab_size_disagreeing_with_embedding_is_refused(hf_copy, tmp_path, capsys):
    _edit_config(hf_copy, vocab_size=256)
    out = str(tmp_path / "out")
    _assert_clean_failure(capsys, ["hf-to-mcore", "--hf-dir", hf_copy, "--mcore-dir", out], out,
                          "embed_tokens", "vocab_size = 256")


def test_tp_not_dividing_heads_is_refused(hf_copy, tmp_path, capsys):
    out = str(tmp_path / "out")
    _assert_clean_failure(capsys, ["hf-to-mcore", "--hf-dir", hf_copy, "--mcore-dir", out, "--tp", "3"], out,
                          "--tp 3", "num_attention_heads")


def test_existing_output_is_not_overwritten(converted, capsys):
    hf, mcore, _ = converted
    before = sorted(os.listdir(mcore))
    assert tide_convert(["hf-to-mcore", "--hf-dir", hf, "--mcore-dir", mcore]) == 2
    assert "already exists" in capsys.readouterr().err and sorted(os.listdir(mcore)) == before


def test_seq_length_not_multiple_of_block_is_refused(converted, capsys):
    hf, mcore, _ = converted
    assert tide_convert(["verify", "--hf-dir", hf, "--mcore-dir", mcore, "--seq-length", "10",
                         "--block-size", "4"]) == 2
    assert "--seq-length 10" in capsys.readouterr().err


def test_failure_during_save_leaves_no_partial_directory(converted, tmp_path, monkeypatch, capsys):
    from megatron.core import dist_checkpointing

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dist_checkpointing, "save", broken_save)
    out = str(tmp_path / "out")
    assert tide_convert(["hf-to-mcore", "--hf-dir", converted[0], "--mcore-dir", out]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "tide-convert: error: disk full"
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp-partial")
