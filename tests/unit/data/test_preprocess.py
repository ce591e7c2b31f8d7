"""tide-preprocess: JSONL/text -> megatron-core indexed datasets, read back, bad input, atomicity (issue 4)."""

import json
from pathlib import Path

import numpy as np
import pytest

from tide_megatron.align.alignment import align_chunks, align_pairs
from tide_megatron.align.chunks import keep_chunks_within, teacher_cutoff
from tide_megatron.align.templates import render, render_conversation, resolve_template
from tide_megatron.align.tokenizers import TokenizerLoadError
from tide_megatron.cli.preprocess import main as cli_main
from tide_megatron.data import samples as samples_mod
from tide_megatron.data.indexed import TideAlignedDataset
from tide_megatron.data.preprocess import preprocess
from tide_megatron.data.samples import SampleConfig
from tide_megatron.data.stdlib_snippets import stdlib_snippets

STUDENT, TEACHER = "qwen2", "llama-spm"


def _write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


BAD_ROWS = [
    "{not json",
    {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
    {"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]},
    {"messages": [{"role": "user", "content": "word " * 700}, {"role": "assistant", "content": "ok"}]},
    {"messages": [{"role": "user", "content": "q"}]},
    {"nothing": 1},
]
BAD_REASONS = {"invalid_json": 1, "unknown_role": 1, "missing_role": 1, "prompt_too_long": 1,
               "last_not_assistant": 1, "no_messages": 1}


@pytest.fixture(scope="module")
def corpus():
    return stdlib_snippets(24, seed=5)


@pytest.fixture
def config():
    return SampleConfig(student_tokenizer=STUDENT, teacher_tokenizer=TEACHER, student_template="qwen3",
                        teacher_template="llada2", student_max_len=256, teacher_max_len=320)


def test_roundtrip_matches_independent_tokenization(tok, tmp_path, corpus, config):
    rows = [c for c in corpus[:12]] + BAD_ROWS + [c for c in corpus[12:]]
    src = _write_jsonl(tmp_path / "in.jsonl", [{"messages": c["messages"]} if isinstance(c, dict) and "kind" in c else c
                                              for c in rows])
    summary = preprocess([src], tmp_path / "ds", config, workers=1, progress=False)
    assert summary.kept == len(corpus) and dict(summary.dropped) == BAD_REASONS
    ds = TideAlignedDataset(tmp_path / "ds")
    assert len(ds) == len(corpus) and ds.meta["fields"] == ["student_ids", "student_labels", "teacher_ids", "chunks"]
    S, T = tok(STUDENT), tok(TEACHER)
    s_tpl, t_tpl = resolve_template("qwen3", S, "qwen3"), resolve_template("llada2", T, "llada2")
    for i, conv in enumerate(corpus):
        item = ds[i]
        msgs = conv["messages"]
        full = S.encode(render(S, s_tpl, msgs)).ids
        prompt = S.encode(render(S, s_tpl, msgs[:-1], add_generation_prompt=True)).ids
        assert item["student_ids"].tolist() == full[:256]
        labels = item["student_labels"].tolist()
        assert labels == ([-100] * len(prompt) + full[len(prompt):])[:256]
        t_full = T.encode(render(T, t_tpl, msgs)).ids
        assert item["teacher_ids"].tolist() == t_full[: len(item["teacher_ids"])]
        sc, tc = render_conversation(S, s_tpl, msgs), render_conversation(T, t_tpl, msgs)
        chunks = align_chunks(T, tc, S, sc)
        cut = teacher_cutoff(chunks, len(t_full), min(len(full), 256), 320)
        assert len(item["teacher_ids"]) == cut
        assert item["chunks"].tolist() == [list(c) for c in keep_chunks_within(chunks, cut, min(len(full), 256))]
        assert item["index"].item() == i
    # multi-process output is identical, sample for sample
    preprocess([src], tmp_path / "ds2", config, workers=2, progress=False, chunksize=3)
    ds2 = TideAlignedDataset(tmp_path / "ds2")
    for i in range(len(ds)):
        for f in ("student_ids", "student_labels", "teacher_ids", "chunks"):
            assert np.array_equal(ds[i][f].numpy(), ds2[i][f].numpy())


def test_pairs_mode_with_a_shared_tokenizer(tok, tmp_path, corpus):
    config = SampleConfig(student_tokenizer="qwen2", teacher_tokenizer="qwen2", student_template="qwen3",
                          teacher_template="wedlm", align="pairs", student_max_len=256, teacher_max_len=200)
    src = _write_jsonl(tmp_path / "in.jsonl", [{"messages": c["messages"]} for c in corpus[:10]])
    preprocess([src], tmp_path / "ds", config, progress=False)
    ds = TideAlignedDataset(tmp_path / "ds")
    assert ds.meta["fields"][-1] == "pairs"
    S = tok("qwen2")
    for i, conv in enumerate(corpus[:10]):
        item = ds[i]
        pairs = item["pairs"]
        assert len(pairs) > 0
        s_ids, t_ids = item["student_ids"], item["teacher_ids"]
        assert (pairs[:, 0] < 256).all() and (pairs[:, 1] < len(t_ids)).all()
        same = (s_ids[pairs[:, 0]] == t_ids[pairs[:, 1]]).float().mean()
        assert same > 0.95  # identical BPE on both sides: paired ids agree (edges may differ)
        # §2.4: the teacher ends right after the last aligned token (or at the cap)
        assert len(t_ids) == min(int(pairs[:, 1].max()) + 1, 200) or len(t_ids) == 200
        # only assistant content is paired: every paired student position is a label position
        assert (item["student_labels"][pairs[:, 0]] != -100).all()
        msgs = conv["messages"]
        wedlm = resolve_template("wedlm", S, "wedlm")
        expect = align_pairs(render_conversation(S, wedlm, msgs), render_conversation(S, resolve_template("qwen3", S, "qwen3"), msgs),
                             ("assistant",), msgs)
        expect = [(s, t) for s, t in expect if s < 256 and t < len(t_ids)]
        assert pairs.tolist() == [list(p) for p in expect]


def test_text_files_become_prompt_plus_response(tok, tmp_path, config):
    src = tmp_path / "doc.txt"
    src.write_text("The quick brown fox jumps over the lazy dog.\n")
    preprocess([src], tmp_path / "ds", config, progress=False)
    ds = TideAlignedDataset(tmp_path / "ds")
    S = tok(STUDENT)
    item = ds[0]
    answer = item["student_ids"][item["student_labels"] != -100].tolist()
    assert S.decode(answer).startswith("The quick brown fox jumps over the lazy dog.\n")
    assert config.text_prompt in S.decode(item["student_ids"].tolist())


def test_content_not_in_template_is_a_counted_skip(tmp_path, config, corpus):
    tpl = tmp_path / "upper.jinja"
    tpl.write_text("{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n"
                   "{%- endfor -%}{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}")
    config.student_template = str(tpl)
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "lower case"}]},
            {"messages": [{"role": "user", "content": "HI"}, {"role": "assistant", "content": "UPPER 1"}]}]
    summary = preprocess([_write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "ds", config, progress=False)
    assert summary.kept == 1 and dict(summary.dropped) == {"content_not_in_template": 1}
    assert "in.jsonl:1" in summary.examples["content_not_in_template"]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_all_bad_input_is_one_error_and_no_output(tmp_path, config):
    src = _write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    with pytest.raises(ValueError, match="no sample could be built"):
        preprocess([src], tmp_path / "ds", config, progress=False)
    assert not (tmp_path / "ds").exists() and _leftovers(tmp_path) == []


def test_interrupted_run_leaves_no_partial_dataset(tmp_path, config, corpus, monkeypatch):
    src = _write_jsonl(tmp_path / "in.jsonl", [{"messages": c["messages"]} for c in corpus[:8]])
    preprocess([src], tmp_path / "ds", config, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    real_build = samples_mod.SampleBuilder.build
    calls = {"n": 0}

    def build_then_interrupt(self, messages):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_build(self, messages)

    monkeypatch.setattr(samples_mod.SampleBuilder, "build", build_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        preprocess([src], tmp_path / "new", config, progress=False)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        preprocess([src], tmp_path / "ds", config, progress=False, overwrite=True)
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before  # old dataset intact


def test_existing_output_and_bad_tokenizer_are_clear_errors(tmp_path, config, corpus):
    src = _write_jsonl(tmp_path / "in.jsonl", [{"messages": corpus[0]["messages"]}])
    (tmp_path / "ds").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        preprocess([src], tmp_path / "ds", config, progress=False)
    config.teacher_tokenizer = str(tmp_path / "missing.gguf")
    with pytest.raises(TokenizerLoadError, match="missing.gguf"):
        preprocess([src], tmp_path / "out", config, progress=False)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        preprocess([tmp_path / "nope.jsonl"], tmp_path / "out", config, progress=False)


def test_cli_preprocess_and_inspect(tmp_path, corpus, capsys):
    src = _write_jsonl(tmp_path / "in.jsonl", [{"messages": c["messages"]} for c in corpus[:3]] + ["oops"])
    rc = cli_main([str(src), "-o", str(tmp_path / "ds"), "--student-tokenizer", STUDENT, "--teacher-tokenizer",
                   TEACHER, "--student-template", "qwen3", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "kept 3 samples" in out and "invalid_json: 1" in out
    assert json.loads(out.strip().splitlines()[-1])["kept"] == 3
    assert cli_main(["inspect", str(tmp_path / "ds"), "-i", "1", "--max-rows", "5"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("sample 1:") and "[   0]" in shown and "more" in shown


def test_pair_id_check_keeps_shared_tokenizers_and_skips_mismatched_pairs(tok, tmp_path, corpus):
    """§9.16 (optional check): pairs assume identical BPE; with --check-pair-ids a mismatch is a counted skip."""
    src = _write_jsonl(tmp_path / "in.jsonl", [{"messages": c["messages"]} for c in corpus[:6]])
    shared = SampleConfig(student_tokenizer="qwen2", teacher_tokenizer="qwen2", student_template="qwen3",
                          teacher_template="wedlm", align="pairs", student_max_len=256, teacher_max_len=200,
                          check_pair_ids=True)
    summary = preprocess([src], tmp_path / "shared", shared, progress=False)
    assert summary.kept == 6 and not summary.dropped
    mismatched = SampleConfig(student_tokenizer="qwen2", teacher_tokenizer="gpt-2", student_template="qwen3",
                              teacher_template="wedlm", align="pairs", student_max_len=256, teacher_max_len=200,
                              check_pair_ids=True)
    with pytest.raises(ValueError, match="pair_ids_differ: 6"):  # nothing survives: one clear error
        preprocess([src], tmp_path / "mismatched", mismatched, progress=False)
    assert not (tmp_path / "mismatched").exists()
    unchecked = SampleConfig(**{**mismatched.to_json(), "check_pair_ids": False})
    assert preprocess([src], tmp_path / "unchecked", unchecked, progress=False).kept == 6
