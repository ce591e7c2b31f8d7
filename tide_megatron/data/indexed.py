"""A TIDE dataset on disk: one megatron-core indexed dataset per field, written atomically, read back by index.

Layout of a dataset directory: `<field>.bin/.idx` for student_ids, student_labels, teacher_ids and the
alignment field in use (`chunks` or `pairs`), all with the same number of sequences (sample i is sequence i) and `meta.json` (config + preprocessing summary).
The writer fills a hidden temporary directory next to the target and renames it at the end, so an interrupted
run leaves either nothing or the previous complete dataset; the temporary directories of writers killed with
``kill -9`` (named after their pid and host) are removed by the next writer to the same target. The reader
checks each field's ``.idx`` and ``.bin`` against each other and each sample's token ids against the
vocabularies, so a truncated or corrupt file is one error naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import _INDEX_HEADER, DType, IndexedDataset, IndexedDatasetBuilder

from tide_megatron.atomic import publish
from tide_megatron.data.samples import FIELDS

META_FILE = "meta.json"
_INDEX_FIXED_BYTES = len(_INDEX_HEADER) + 8 + 1 + 8 + 8  # header, version, dtype code, sequence and document counts


class DatasetError(ValueError):
    """A dataset directory is missing a file or holds a truncated or corrupt one; the message names it."""


def check_indexed_files(prefix: Path) -> int:
    """Check ``prefix.idx`` and ``prefix.bin`` against each other before megatron maps them; returns the
    number of sequences. A truncated or foreign file is a `DatasetError` naming it (megatron's reader
    would fail later with a bare numpy error, or an AttributeError from its destructor)."""
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    redo = "re-run tide-preprocess"
    for path in (idx, bin_):
        if not path.is_file():
            raise DatasetError(f"{path}: missing ({redo})")
    size = idx.stat().st_size
    with open(idx, "rb") as fh:
        head = fh.read(_INDEX_FIXED_BYTES)
        if len(head) < _INDEX_FIXED_BYTES or not head.startswith(_INDEX_HEADER):
            raise DatasetError(f"{idx}: not a megatron indexed-dataset index ({size} bytes, expected the "
                               f"{_INDEX_HEADER!r} header; truncated or foreign file, {redo})")
        version, code, sequences, documents = struct.unpack("<QBQQ", head[len(_INDEX_HEADER):])
        try:
            itemsize = DType.size(DType.dtype_from_code(code))
        except (KeyError, ValueError):
            raise DatasetError(f"{idx}: unknown dtype code {code} (corrupt file, {redo})") from None
        expected = _INDEX_FIXED_BYTES + sequences * (4 + 8) + documents * 8
        if version != 1 or size != expected:
            raise DatasetError(f"{idx}: truncated or corrupt: {size} bytes, expected {expected} for {sequences} "
                               f"sequences and {documents} documents ({redo})")
        if sequences == 0:
            return 0
        fh.seek(_INDEX_FIXED_BYTES + (sequences - 1) * 4)
        (last_length,) = struct.unpack("<i", fh.read(4))
        fh.seek(_INDEX_FIXED_BYTES + sequences * 4 + (sequences - 1) * 8)
        (last_pointer,) = struct.unpack("<q", fh.read(8))
    needed = last_pointer + last_length * itemsize
    have = bin_.stat().st_size
    if have != needed:
        raise DatasetError(f"{bin_}: {have} bytes, but its index {idx.name} describes {needed} "
                           f"({'truncated' if have < needed else 'unexpected trailing data'}; {redo})")
    return sequences


class DatasetWriter:
    """Context manager: `add(sample)` per kept sample; on clean exit finalize and rename into `out_dir`."""

    def __init__(self, out_dir: str | os.PathLike, fields: tuple[str, ...] = FIELDS, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        self.fields = tuple(fields)
        if self.out_dir.exists() and not overwrite:
            raise FileExistsError(f"output {self.out_dir} exists; pass --overwrite to replace it")
        self.meta: dict = {}
        self.count = 0

    def __enter__(self) -> "DatasetWriter":
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        self._tmp = Path(tempfile.mkdtemp(dir=self.out_dir.parent, prefix=_temporary_prefix(self.out_dir)))
        self._builders = {f: IndexedDatasetBuilder(str(self._tmp / f"{f}.bin"), dtype=np.int32) for f in self.fields}
        return self

    def add(self, sample: dict[str, np.ndarray]) -> None:
        for f in self.fields:
            self._builders[f].add_item(torch.from_numpy(np.ascontiguousarray(sample[f], dtype=np.int32)))
            self._builders[f].end_document()
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                return
            for f, b in self._builders.items():
                b.finalize(str(self._tmp / f"{f}.idx"))
            (self._tmp / META_FILE).write_text(json.dumps({**self.meta, "fields": list(self.fields), "num_samples": self.count}, indent=2))
            os.chmod(self._tmp, 0o755)
            publish(self._tmp, self.out_dir)
        finally:
            for b in getattr(self, "_builders", {}).values():
                if not b.data_file.closed:
                    b.data_file.close()
            shutil.rmtree(self._tmp, ignore_errors=True)


def _temporary_prefix(out_dir: Path) -> str:
    """A hidden sibling name that says who writes it: ``.<name>.tmp-<pid>@<host>-<random>``."""
    return f".{out_dir.name}.tmp-{os.getpid()}@{socket.gethostname()}-"


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Remove the temporary siblings of ``out_dir`` left by writers on this host that no longer run (a
    ``kill -9`` during tide-preprocess); returns what was removed. Other hosts' and live writers' are kept."""
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.tmp-(\d+)@(.+)-[a-z0-9_]+$")
    removed = []
    for entry in out_dir.parent.iterdir() if out_dir.parent.is_dir() else ():
        m = pattern.match(entry.name)
        if m and m.group(2) == socket.gethostname() and not _process_alive(int(m.group(1))):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class TideAlignedDataset(torch.utils.data.Dataset):
    """Reads a `tide-preprocess` directory; item i is a dict of int64 tensors plus its `index`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / META_FILE
        if not meta_file.exists():
            raise FileNotFoundError(f"{self.path}: not a tide-preprocess dataset (no {META_FILE})")
        try:
            self.meta = json.loads(meta_file.read_text())
            fields = list(self.meta["fields"])
        except (ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{meta_file}: not a tide-preprocess {META_FILE} ({type(err).__name__}: {err}); "
                               f"re-run tide-preprocess") from None
        counts = {f: check_indexed_files(self.path / f) for f in fields}
        if len(set(counts.values())) != 1:
            raise DatasetError(f"{self.path}: fields have different sample counts {counts}")
        self._fields: dict[str, IndexedDataset] | None = None
        n = self._open()["student_ids"]
        self._len = len(n)

    def _open(self) -> dict[str, IndexedDataset]:
        if self._fields is None:  # opened lazily so each DataLoader worker maps its own files
            self._fields = {f: IndexedDataset(str(self.path / f)) for f in self.meta["fields"]}
            lengths = {f: len(d) for f, d in self._fields.items()}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"{self.path}: fields have different sample counts {lengths}")
        return self._fields

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fields"] = None
        return state

    def __len__(self) -> int:
        return self._len

    def _check_token_ids(self, i: int, sample: dict[str, torch.Tensor]) -> None:
        """Token ids must lie inside their tokenizer's vocabulary (labels may also be -100): corrupt data is an
        error naming the file and the sample, not an index error deep inside the model."""
        for name, side, ignore in (("student_ids", "student", None), ("student_labels", "student", -100),
                                   ("teacher_ids", "teacher", None)):
            ids, vocab = sample.get(name), (self.meta.get(side) or {}).get("vocab_size")
            if ids is None or not vocab or ids.numel() == 0:
                continue
            valid = ids if ignore is None else ids[ids != ignore]
            if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= vocab):
                bad = int(valid.max()) if int(valid.max()) >= vocab else int(valid.min())
                raise DatasetError(f"{self.path / name}.bin: sample {i} holds token id {bad}, outside the {side} "
                                   f"vocabulary [0, {vocab}) of {META_FILE} (corrupt data; re-run tide-preprocess)")

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        fields = self._open()
        out = {f: torch.from_numpy(np.asarray(fields[f][i], dtype=np.int64)) for f in fields}
        self._check_token_ids(i, out)
        out["chunks"] = out["chunks"].view(-1, 4) if "chunks" in out else torch.zeros(0, 4, dtype=torch.int64)
        out["pairs"] = out["pairs"].view(-1, 2) if "pairs" in out else torch.zeros(0, 2, dtype=torch.int64)
        out["index"] = torch.tensor(i, dtype=torch.int64)
        return out
