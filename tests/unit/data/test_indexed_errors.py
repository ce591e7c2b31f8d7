"""A truncated, foreign or corrupt dataset file is one error naming it; stale temp dirs of dead writers go."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tide_megatron.data.indexed import DatasetError, DatasetWriter, TideAlignedDataset, remove_stale_temporaries
from tide_megatron.data.preprocess import iter_records

FIELDS = ("student_ids", "student_labels", "teacher_ids")


@pytest.fixture
def dataset(tmp_path):
    out = tmp_path / "ds"
    with DatasetWriter(out, fields=FIELDS) as writer:
        for n in (5, 3, 4):
            writer.add({f: np.arange(n) for f in FIELDS})
        writer.meta = {"student": {"vocab_size": 10}, "teacher": {"vocab_size": 10}}
    return out


def test_a_complete_dataset_reads_back(dataset):
    ds = TideAlignedDataset(dataset)
    assert len(ds) == 3 and ds[2]["student_ids"].tolist() == [0, 1, 2, 3]


def test_truncated_idx_names_the_file_and_the_expected_size(dataset):
    idx = dataset / "teacher_ids.idx"
    size = idx.stat().st_size
    with open(idx, "r+b") as fh:
        fh.truncate(size - 8)
    with pytest.raises(DatasetError) as err:
        TideAlignedDataset(dataset)
    assert str(err.value) == (f"{idx}: truncated or corrupt: {size - 8} bytes, expected {size} for 3 sequences and "
                              f"4 documents (re-run tide-preprocess)")
    idx.write_bytes(b"\0" * 10)
    with pytest.raises(DatasetError, match=r"teacher_ids\.idx: not a megatron indexed-dataset index \(10 bytes"):
        TideAlignedDataset(dataset)


@pytest.mark.parametrize("change, word", [(-4, "truncated"), (8, "unexpected trailing data")])
def test_a_bin_of_the_wrong_size_names_the_file(dataset, change, word):
    bin_ = dataset / "student_ids.bin"
    size = bin_.stat().st_size
    with open(bin_, "r+b") as fh:
        fh.truncate(size + change)
    with pytest.raises(DatasetError) as err:
        TideAlignedDataset(dataset)
    assert str(err.value) == (f"{bin_}: {size + change} bytes, but its index student_ids.idx describes {size} "
                              f"({word}; re-run tide-preprocess)")


def test_token_ids_outside_the_vocabulary_name_the_file_and_sample(dataset):
    bin_ = dataset / "teacher_ids.bin"
    ids = np.fromfile(bin_, dtype=np.int32)
    ids[-1] = 10
    ids.tofile(bin_)
    ds = TideAlignedDataset(dataset)
    assert ds[0]["teacher_ids"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DatasetError) as err:
        ds[2]
    assert str(err.value) == (f"{bin_}: sample 2 holds token id 10, outside the teacher vocabulary [0, 10) of "
                              f"meta.json (corrupt data; re-run tide-preprocess)")


def test_missing_files_and_a_foreign_meta_are_named(dataset):
    (dataset / "student_labels.bin").unlink()
    with pytest.raises(DatasetError, match=r"student_labels\.bin: missing \(re-run tide-preprocess\)"):
        TideAlignedDataset(dataset)
    (dataset / "meta.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"meta\.json: not a tide-preprocess meta\.json \(KeyError"):
        TideAlignedDataset(dataset)


def test_stale_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    gone = dead.stdout.strip()
    names = {"dead": f".ds.tmp-{gone}@{host}-abc_1", "dead_too": f".ds.tmp-{gone}@{host}-x9",
             "live": f".ds.tmp-{os.getpid()}@{host}-abc", "other_host": f".ds.tmp-{gone}@elsewhere-abc",
             "other_dataset": f".other.tmp-{gone}@{host}-abc"}
    for name in names.values():
        (tmp_path / name).mkdir()
    removed = remove_stale_temporaries(tmp_path / "ds")
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead_too"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["live"], names["other_host"],
                                                                  names["other_dataset"]])


def test_a_jsonl_line_that_is_not_utf8_names_the_file_and_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match=rf"^{src}:2: not UTF-8 text \(invalid start byte at byte 10 of the line\)"):
        list(iter_records([src]))
