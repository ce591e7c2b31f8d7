"""Offline teacher payloads (``teacher.placement=offline``): N epochs of chunk-mode payloads next to the dataset.

The stage's noise is a function of (seed, epoch, sample) (data/stage.py), so the teacher's payload of a sample
in an epoch is fixed before training starts. `CacheWriter` stores it once per (epoch, sample); `TeacherCache`
serves it to a run that builds no teacher. Only the chunk modes' payload is small enough to store: one fp32
per teacher token (log p of the clean token, CompDemo-merged, 0 where no chunk loss reads it; §5.5-5.7). The
token modes' payload is a full-vocabulary row per distilled position (the config refuses them offline).

Layout of a cache directory (staged beside its final name and renamed when complete, `atomic.staged_path`):

    meta.json                      format, fingerprint (what the payloads depend on), splits, file sizes
    <split>/epoch_XXXX.bin / .idx  a megatron-core indexed dataset of fp32; document i = sample i

The fingerprint names each setting by its config field (data.train, optim.seed, objective.compdemo, ...,
teacher.checkpoint); `TeacherCache.open` refuses a cache whose fingerprint differs from the run's, that lacks an
epoch or split the run reads, or whose files do not have the sizes recorded when it was written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from tide_megatron.data.batch import DistillBatch

CACHE_FORMAT = "tide-teacher-cache-v1"
META_FILE = "meta.json"
PAYLOAD = "token_logprobs"  # the one payload an offline cache holds
SAMPLE_BLOCK = 1 << 20  # bytes read at the start, middle and end of a large file for its digest
WHOLE_FILE = 8 << 20  # files up to this size are hashed whole


class CacheError(ValueError):
    """A teacher cache that belongs to another run, lacks what this run reads, or is incomplete; names the file."""


def content_digest(path: str | os.PathLike) -> str:
    """sha256 over a file or a directory's files (names, sizes and bytes; files above 8 MiB by three 1 MiB
    blocks at the start, middle and end, so a multi-GB checkpoint is fingerprinted in milliseconds)."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and
                                                  not any(part.startswith(".") for part in p.relative_to(root).parts))
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(root) if f != root else f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= WHOLE_FILE:
                h.update(fh.read())
                continue
            for offset in (0, size // 2, size - SAMPLE_BLOCK):
                fh.seek(offset)
                h.update(fh.read(SAMPLE_BLOCK))
    return h.hexdigest()


def dataset_digest(dataset) -> str:
    """The digest of a dataset: its directory's content (`TideAlignedDataset`), else its items and meta."""
    path = getattr(dataset, "path", None)
    if path is not None:
        return content_digest(path)
    h = hashlib.sha256(json.dumps(dataset.meta, sort_keys=True).encode())
    for i in range(len(dataset)):
        for key, value in sorted(dataset[i].items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(torch.as_tensor(value).numpy()).tobytes())
    return h.hexdigest()


def epoch_prefix(root: Path, split: str, epoch: int) -> Path:
    return root / split / f"epoch_{epoch:04d}"


class CacheWriter:
    """Fills a staged cache directory one (split, epoch) at a time; `finish` writes meta.json (last)."""

    def __init__(self, staged_dir: Path, fingerprint: dict[str, Any], teacher: dict[str, int]):
        self.dir = Path(staged_dir)
        self.fingerprint = fingerprint
        self.teacher = teacher
        self.splits: dict[str, dict[str, Any]] = {}
        self.sizes: dict[str, int] = {}

    def write_epoch(self, split: str, epoch: int, payloads: Iterable[np.ndarray], num_samples: int) -> None:
        """Document i of ``payloads`` is sample i's fp32 payload (one value per teacher token)."""
        prefix = epoch_prefix(self.dir, split, epoch)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.float32)
        count = 0
        try:
            for values in payloads:
                builder.add_item(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)))
                builder.end_document()
                count += 1
            builder.finalize(str(prefix) + ".idx")
        finally:
            if not builder.data_file.closed:
                builder.data_file.close()
        if count != num_samples:
            raise CacheError(f"{prefix}.bin: wrote {count} payloads for {num_samples} samples")
        split_meta = self.splits.setdefault(split, {"samples": num_samples, "epochs": 0})
        if epoch != split_meta["epochs"]:
            raise CacheError(f"{prefix}: epochs of split {split!r} must be written in order (next is "
                             f"{split_meta['epochs']})")
        split_meta["epochs"] += 1
        for suffix in (".bin", ".idx"):
            f = Path(str(prefix) + suffix)
            self.sizes[str(f.relative_to(self.dir))] = f.stat().st_size

    def finish(self) -> None:
        meta = {"format": CACHE_FORMAT, "payload": PAYLOAD, "fingerprint": self.fingerprint, "teacher": self.teacher,
                "splits": self.splits, "file_sizes": self.sizes}
        (self.dir / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))


class TeacherCache:
    """A complete cache checked against the run that reads it: payloads by (split, epoch, sample)."""

    def __init__(self, root: Path, meta: dict):
        self.root, self.meta = root, meta
        self._open: dict[tuple[str, int], IndexedDataset] = {}

    @property
    def teacher(self) -> dict[str, int]:
        """The teacher's vocabulary size, mask and pad ids the payloads were computed with."""
        return self.meta["teacher"]

    @classmethod
    def open(cls, path: str | os.PathLike, fingerprint: dict[str, Any], splits: dict[str, int]) -> "TeacherCache":
        """Open ``path`` for a run with ``fingerprint`` that reads ``splits`` (name → sample count); every
        mismatch is a `CacheError` naming the file and the setting."""
        root = Path(path)
        meta_file = root / META_FILE
        if not root.is_dir():
            raise CacheError(f"teacher.cache: no teacher cache at {str(root)!r}; write one with tide-teacher-cache "
                             f"(teacher.placement=offline reads it instead of running the teacher)")
        if not meta_file.is_file():
            raise CacheError(f"{meta_file}: missing, so {root} is not a complete teacher cache (tide-teacher-cache "
                             f"writes meta.json last and renames the directory into place only when complete)")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as err:
            raise CacheError(f"{meta_file}: not valid JSON ({err})") from None
        if meta.get("format") != CACHE_FORMAT or meta.get("payload") != PAYLOAD:
            raise CacheError(f"{meta_file}: format {meta.get('format')!r} / payload {meta.get('payload')!r}, "
                             f"expected {CACHE_FORMAT!r} / {PAYLOAD!r}")
        recorded = meta.get("fingerprint", {})
        for field in sorted(set(recorded) | set(fingerprint)):
            if recorded.get(field) != fingerprint.get(field):
                raise CacheError(f"{meta_file}: the cache was written for {field} = {recorded.get(field)!r}, this run "
                                 f"has {fingerprint.get(field)!r}; its payloads belong to another run (write a new "
                                 f"cache with tide-teacher-cache, or point teacher.cache at the right one)")
        for split, samples in splits.items():
            have = meta["splits"].get(split)
            if have is None:
                raise CacheError(f"{meta_file}: no {split!r} payloads (data.{split} is set); rewrite the cache with it")
            if have["samples"] != samples:
                raise CacheError(f"{meta_file}: {have['samples']} {split} samples, the dataset has {samples}")
        for name, size in meta.get("file_sizes", {}).items():
            f = root / name
            if not f.is_file():
                raise CacheError(f"{f}: missing from the teacher cache (a cache written only in part)")
            if f.stat().st_size != size:
                raise CacheError(f"{f}: {f.stat().st_size} bytes, {size} when the cache was written (a cache "
                                 f"written or copied only in part)")
        cache = cls(root, meta)
        for split in splits:
            for epoch in range(meta["splits"][split]["epochs"]):
                if not Path(str(epoch_prefix(root, split, epoch)) + ".idx").is_file():
                    raise CacheError(f"{epoch_prefix(root, split, epoch)}.idx: missing from the teacher cache")
        return cache

    def epochs(self, split: str) -> int:
        return int(self.meta["splits"][split]["epochs"])

    def require_epochs(self, split: str, needed: int, why: str) -> None:
        """The run reads epochs ``0 .. needed-1`` of ``split``: each must be in the cache."""
        have = self.epochs(split)
        if needed > have:
            missing = epoch_prefix(self.root, split, have)
            raise CacheError(f"{self.root / META_FILE}: the run reads {needed} epochs of {split} ({why}) but the cache "
                             f"holds {have}; {missing}.bin is missing (rewrite it with tide-teacher-cache --epochs "
                             f"{needed})")

    def _dataset(self, split: str, epoch: int) -> IndexedDataset:
        key = (split, epoch)
        if key not in self._open:
            if epoch >= self.epochs(split):
                raise CacheError(f"{epoch_prefix(self.root, split, epoch)}.bin: epoch {epoch} of {split} is not in "
                                 f"the teacher cache (it holds {self.epochs(split)})")
            self._open[key] = IndexedDataset(str(epoch_prefix(self.root, split, epoch)))
        return self._open[key]

    def payload(self, split: str, batch: DistillBatch) -> torch.Tensor:
        """fp32 ``[b, L_t]``: what the teacher returns for ``batch`` (0 beyond each sample's teacher tokens)."""
        if batch.index is None or batch.epoch is None:
            raise ValueError("teacher cache: the batch carries no sample indices / epoch (data/stage.py adds them)")
        data = self._dataset(split, batch.epoch)
        lengths = batch.teacher_attention.sum(1).tolist()
        out = torch.zeros(tuple(batch.teacher_ids.shape), dtype=torch.float32)
        for k, (i, n) in enumerate(zip(batch.index.tolist(), lengths)):
            values = data[i]
            if len(values) != n:
                raise CacheError(f"{epoch_prefix(self.root, split, batch.epoch)}.bin: sample {i} has {len(values)} "
                                 f"teacher tokens in the cache and {n} in the dataset")
            out[k, :n] = torch.from_numpy(np.asarray(values, dtype=np.float32))
        return out.to(batch.teacher_ids.device)

    def close(self) -> None:
        self._open.clear()


def cache_size_bytes(teacher_tokens: int, epochs: int) -> int:
    """Bytes of the payloads of ``epochs`` epochs of a split with ``teacher_tokens`` teacher tokens in all."""
    return 4 * teacher_tokens * epochs
