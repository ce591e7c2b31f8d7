"""The stdlib corpus: real text, a stable and disjoint train/held-out split."""

import itertools

from tide_megatron.data.corpus import CorpusSpec, iter_conversations, stdlib_modules, stdlib_root, write_jsonl


def test_splits_are_disjoint_and_real_text():
    spec = CorpusSpec()
    train = list(itertools.islice(iter_conversations("train", spec), 300))
    heldout = list(itertools.islice(iter_conversations("heldout", spec), 100))
    assert len(train) == 300 and len(heldout) == 100
    modules = lambda convs: {c["messages"][0]["content"].split("`")[1] for c in convs}  # noqa: E731
    assert not modules(train) & modules(heldout)
    # Every response is a verbatim stretch of a stdlib source file.
    sample = heldout[0]
    module = sample["messages"][0]["content"].split("`")[1]
    source = (stdlib_root() / (module.replace(".", "/") + ".py"))
    if not source.exists():
        source = stdlib_root() / module.replace(".", "/") / "__init__.py"
    assert sample["messages"][1]["content"] in source.read_text(encoding="utf-8")


def test_modules_exclude_test_suites():
    files = stdlib_modules()
    assert len(files) > 300
    assert not any("/test/" in str(f) for f in files)


def test_write_jsonl_is_deterministic(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_jsonl(a, "heldout", 20) == 20
    write_jsonl(b, "heldout", 20)
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
