"""The offline teacher cache on disk (teacher.placement=offline): payloads come back as written, and every cache
that does not belong to the run, or is incomplete, is one error naming the file and the setting."""

import json
import shutil

import numpy as np
import pytest
import torch

from tide_megatron.atomic import staged_path
from tide_megatron.data.batch import DistillBatch
from tide_megatron.teacher.cache import CacheError, CacheWriter, TeacherCache, content_digest

FINGERPRINT = {"data.train": "abc", "optim.seed": 42, "objective.compdemo": True, "teacher.checkpoint": "def"}
LENGTHS = [5, 3, 7, 4]


def _payload(epoch: int, sample: int) -> np.ndarray:
    return np.arange(LENGTHS[sample], dtype=np.float32) * -0.5 - epoch - 10 * sample


def _write(path, epochs=2, splits=("train",)):
    with staged_path(path, directory=True) as staged:
        writer = CacheWriter(staged, FINGERPRINT, {"vocab_size": 160, "mask_id": 157, "pad_id": 158})
        for split in splits:
            for e in range(epochs if split == "train" else 1):
                writer.write_epoch(split, e, (_payload(e, i) for i in range(len(LENGTHS))), len(LENGTHS))
        writer.finish()
    return path


def _batch(indices, epoch):
    Lt = max(LENGTHS[i] for i in indices) + 1
    att = torch.zeros(len(indices), Lt, dtype=torch.bool)
    for k, i in enumerate(indices):
        att[k, :LENGTHS[i]] = True
    z = torch.zeros(len(indices), 4, dtype=torch.long)
    return DistillBatch(x0=z, labels=z, t=torch.zeros(len(indices)), masked=z.bool(), xt=z,
                        teacher_ids=torch.zeros(len(indices), Lt, dtype=torch.long), teacher_attention=att,
                        index=torch.tensor(indices), epoch=epoch)


def test_payloads_come_back_per_epoch_and_sample_padded_with_zeros(tmp_path):
    cache = TeacherCache.open(_write(tmp_path / "c"), FINGERPRINT, {"train": 4})
    assert cache.teacher == {"vocab_size": 160, "mask_id": 157, "pad_id": 158} and cache.epochs("train") == 2
    got = cache.payload("train", _batch([2, 0], epoch=1))
    assert got.shape == (2, 8) and got.dtype == torch.float32
    torch.testing.assert_close(got[0, :7], torch.from_numpy(_payload(1, 2)))
    torch.testing.assert_close(got[1, :5], torch.from_numpy(_payload(1, 0)))
    assert (got[0, 7:] == 0).all() and (got[1, 5:] == 0).all()
    assert not (got[0, :7] == torch.from_numpy(_payload(0, 2))).all()  # epochs differ


@pytest.mark.parametrize("field, value", [("data.train", "other"), ("optim.seed", 43), ("objective.compdemo", False),
                                          ("teacher.checkpoint", "xyz")])
def test_a_cache_for_other_settings_is_refused_naming_the_field(tmp_path, field, value):
    path = _write(tmp_path / "c")
    with pytest.raises(CacheError, match=rf"meta\.json: the cache was written for {field} = .* this run has "
                                         rf"{value!r}; its payloads belong to another run"):
        TeacherCache.open(path, {**FINGERPRINT, field: value}, {"train": 4})


def test_missing_epochs_splits_and_files_are_refused(tmp_path):
    path = _write(tmp_path / "c")
    cache = TeacherCache.open(path, FINGERPRINT, {"train": 4})
    with pytest.raises(CacheError, match=r"reads 3 epochs of train \(why\) but the cache holds 2; .*epoch_0002\.bin"):
        cache.require_epochs("train", 3, "why")
    with pytest.raises(CacheError, match=r"no 'valid' payloads"):
        TeacherCache.open(path, FINGERPRINT, {"train": 4, "valid": 2})
    with pytest.raises(CacheError, match=r"4 train samples, the dataset has 5"):
        TeacherCache.open(path, FINGERPRINT, {"train": 5})
    (path / "train" / "epoch_0001.idx").unlink()
    with pytest.raises(CacheError, match=r"epoch_0001\.idx: missing from the teacher cache \(a cache written only "
                                         r"in part\)"):
        TeacherCache.open(path, FINGERPRINT, {"train": 4})


def test_partly_written_or_truncated_caches_are_refused(tmp_path):
    path = _write(tmp_path / "c")
    torn = tmp_path / "torn"
    shutil.copytree(path, torn)
    with open(torn / "train" / "epoch_0000.bin", "r+b") as fh:
        fh.truncate(8)
    with pytest.raises(CacheError, match=r"epoch_0000\.bin: 8 bytes, .* when the cache was written"):
        TeacherCache.open(torn, FINGERPRINT, {"train": 4})
    (torn / "meta.json").unlink()
    with pytest.raises(CacheError, match=r"meta\.json: missing, so .* is not a complete teacher cache"):
        TeacherCache.open(torn, FINGERPRINT, {"train": 4})
    with pytest.raises(CacheError, match=r"teacher\.cache: no teacher cache at"):
        TeacherCache.open(tmp_path / "nothing", FINGERPRINT, {"train": 4})
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format": "v0"}))
    with pytest.raises(CacheError, match=r"format 'v0'"):
        TeacherCache.open(path, FINGERPRINT, {"train": 4})


def test_a_failed_write_leaves_nothing(tmp_path):
    def failing():
        yield _payload(0, 0)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        with staged_path(tmp_path / "c", directory=True) as staged:
            CacheWriter(staged, FINGERPRINT, {}).write_epoch("train", 0, failing(), 4)
    assert list(tmp_path.iterdir()) == []


def test_the_digest_follows_the_content_and_samples_large_files(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text("{}")
    big = np.zeros(12 << 20, dtype=np.uint8)
    big.tofile(a / "model.safetensors")
    (a / ".hidden").write_text("ignored")
    first = content_digest(a)
    (a / ".hidden").write_text("changed")
    assert content_digest(a) == first
    big[-1] = 1  # inside the last sampled block
    big.tofile(a / "model.safetensors")
    assert content_digest(a) != first
    (a / "config.json").write_text('{"x": 1}')
    assert content_digest(a) != first
