"""Stage-then-rename writes (tide_megatron/atomic.py): nothing half-written is ever at the final path."""

import pytest

from tide_megatron.atomic import publish, staged_path, write_text_atomic


def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "results.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with staged_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_a_directory_replaces_the_old_one_whole_and_keeps_its_suffix(tmp_path):
    final = tmp_path / "out"
    with staged_path(final, directory=True) as tmp:
        (tmp / "a").write_text("1")
    with staged_path(final, directory=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"] and len(list(tmp_path.iterdir())) == 1
    with staged_path(tmp_path / "curve.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path  # savefig picks the format from the suffix
        tmp.write_bytes(b"png")
    assert (tmp_path / "curve.png").read_bytes() == b"png"


def test_publish_without_replace_keeps_what_another_writer_put_there(tmp_path):
    final, staged = tmp_path / "cache", tmp_path / "staged"
    final.mkdir()
    (final / "theirs").write_text("x")
    staged.mkdir()
    (staged / "mine").write_text("y")
    assert publish(staged, final, replace=False) is False
    assert [p.name for p in final.iterdir()] == ["theirs"] and not staged.exists()
    staged.mkdir()
    assert publish(staged, tmp_path / "fresh", replace=False) is True and (tmp_path / "fresh").is_dir()
