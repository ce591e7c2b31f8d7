"""A TIDE dataset on disk: one megatron-core indexed dataset per field, written atomically, read back by index.

Layout of a dataset directory: `<field>.bin/.idx` for student_ids, student_labels, teacher_ids and the
alignment field in use (`chunks` or `pairs`), all with the same number of sequences (sample i is sequence i) and `meta.json` (config + preprocessing summary).
The writer fills a hidden temporary directory next to the target and renames it at the end, so an interrupted
run leaves either nothing or the previous complete dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from tide_megatron.atomic import publish
from tide_megatron.data.samples import FIELDS

META_FILE = "meta.json"


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
        self._tmp = Path(tempfile.mkdtemp(dir=self.out_dir.parent, prefix=f".{self.out_dir.name}.tmp-"))
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


class TideAlignedDataset(torch.utils.data.Dataset):
    """Reads a `tide-preprocess` directory; item i is a dict of int64 tensors plus its `index`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / META_FILE
        if not meta_file.exists():
            raise FileNotFoundError(f"{self.path}: not a tide-preprocess dataset (no {META_FILE})")
        self.meta = json.loads(meta_file.read_text())
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

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        fields = self._open()
        out = {f: torch.from_numpy(np.asarray(fields[f][i], dtype=np.int64)) for f in fields}
        out["chunks"] = out["chunks"].view(-1, 4) if "chunks" in out else torch.zeros(0, 4, dtype=torch.int64)
        out["pairs"] = out["pairs"].view(-1, 2) if "pairs" in out else torch.zeros(0, 2, dtype=torch.int64)
        out["index"] = torch.tensor(i, dtype=torch.int64)
        return out
