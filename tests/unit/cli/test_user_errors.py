"""The inputs that used to end in raw tracebacks: each is one line on stderr naming the file and what was
expected, with a non-zero exit (issue 13, item 8)."""

import json
import shutil

import pytest

from tide_megatron.cli.convert import main as tide_convert
from tide_megatron.cli.evaluate import main as tide_eval
from tide_megatron.cli.preprocess import main as tide_preprocess


def _one_error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from tide_megatron.models.qwen3.tiny import save_tiny_qwen3

    root = tmp_path_factory.mktemp("hf")
    save_tiny_qwen3(str(root / "hf"), seed=3, vocab_size=128)
    return root / "hf"


def test_a_truncated_safetensors_shard_is_named(tiny_hf, tmp_path, capsys):
    broken = tmp_path / "hf"
    shutil.copytree(tiny_hf, broken)
    shard = next(broken.glob("*.safetensors"))
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    assert tide_convert(["hf-to-mcore", "--hf-dir", str(broken), "--mcore-dir", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys, "tide-convert")
    assert line.startswith(f"tide-convert: error: {shard}: not a readable safetensors file (") and "truncated" in line
    assert not (tmp_path / "out").exists()


def test_tide_eval_on_a_directory_without_a_tokenizer_says_so(tiny_hf, tmp_path, capsys):
    model_only = tmp_path / "model"
    model_only.mkdir()
    for name in ("config.json", *[p.name for p in tiny_hf.glob("*.safetensors")]):
        shutil.copy(tiny_hf / name, model_only / name)
    assert tide_eval(["--hf-dir", str(model_only), "--tasks", "throughput"]) == 2
    assert _one_error_line(capsys, "tide-eval") == (
        f"tide-eval: error: {model_only}: no tokenizer there (tokenizer.json, tokenizer.model or vocab.json); "
        f"pass --tokenizer DIR")


def test_preprocess_errors_name_the_file(real_artifacts, tmp_path, capsys):
    flags = ["--student-tokenizer", "qwen2", "--teacher-tokenizer", "qwen2", "--no-progress"]
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello there"}]}) + "\n")
    bad_bytes = tmp_path / "latin1.jsonl"
    bad_bytes.write_bytes(b'{"text": "caf\xe9"}\n')
    cases = [
        ([str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o1")],
         f"input {tmp_path / 'missing.jsonl'}: no such file"),
        ([str(bad_bytes), "-o", str(tmp_path / "o2")], f"{bad_bytes}:1: not UTF-8 text"),
        ([str(good), "-o", str(tmp_path / "o3"), "--student-template", str(tmp_path / "none.jinja")],
         f"chat template file {tmp_path / 'none.jinja'}: no such file"),
        ([str(good), "-o", str(tmp_path / "o4"), "--student-tokenizer", str(good)],
         f"{good}: expected a directory, a .gguf, a SentencePiece .model or a tokenizer.json"),
    ]
    for argv, expected in cases:
        assert tide_preprocess(argv + flags if "--student-tokenizer" not in argv else argv + flags[2:]) == 2, argv
        assert _one_error_line(capsys, "tide-preprocess").startswith(f"tide-preprocess: error: {expected}"), argv
    assert tide_preprocess([str(good), "-o", str(tmp_path / "ds")] + flags) == 0
    capsys.readouterr()
    assert tide_preprocess(["inspect", str(tmp_path / "ds"), "-i", "5"]) == 2
    assert _one_error_line(capsys, "tide-preprocess") == (
        f"tide-preprocess: error: --index 5: {tmp_path / 'ds'} has 1 samples (0 .. 0)")
    (tmp_path / "ds" / "teacher_ids.idx").write_bytes(b"MMIDIDX\x00\x00")
    assert tide_preprocess(["inspect", str(tmp_path / "ds")]) == 2
    line = _one_error_line(capsys, "tide-preprocess")
    assert "teacher_ids.idx: not a megatron indexed-dataset index (9 bytes" in line
