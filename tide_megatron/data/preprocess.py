"""`tide-preprocess` logic: conversations -> TIDE indexed dataset, in worker processes, with a skip summary.

Inputs are JSONL files (one `{"messages": [{"role", "content"}, ...]}` or `{"text": ...}` object per line) or
plain-text files (any other suffix: the whole file is one sample, see `SampleBuilder.text_to_messages`).
Samples that cannot be built are skipped and counted by reason; the order of kept samples follows the input.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from tide_megatron.align.templates import SampleError
from tide_megatron.data.compatibility import tokenizer_fingerprint
from tide_megatron.data.indexed import DatasetWriter
from tide_megatron.data.samples import SampleBuilder, SampleConfig
from tide_megatron.distributed.lifetime import die_with_parent

_WORKER: SampleBuilder | None = None


@dataclass
class PreprocessSummary:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    kept_without_alignment: int = 0
    student_tokens: int = 0
    teacher_tokens: int = 0
    chunks: int = 0
    pairs: int = 0
    examples: dict = field(default_factory=dict)  # reason -> first "file:line: detail"

    def as_dict(self) -> dict:
        return {"kept": self.kept, "dropped": dict(self.dropped), "dropped_total": sum(self.dropped.values()),
                "kept_without_alignment": self.kept_without_alignment, "student_tokens": self.student_tokens,
                "teacher_tokens": self.teacher_tokens, "chunks": self.chunks, "pairs": self.pairs,
                "first_example_per_reason": self.examples}

    def render(self) -> str:
        lines = [f"kept {self.kept} samples ({self.student_tokens} student / {self.teacher_tokens} teacher tokens, "
                 f"{self.chunks} chunks, {self.pairs} pairs; {self.kept_without_alignment} without any alignment)",
                 f"dropped {sum(self.dropped.values())} samples"]
        for reason, n in self.dropped.most_common():
            lines.append(f"  {reason}: {n}   e.g. {self.examples.get(reason, '')}")
        return "\n".join(lines)


def _input_files(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[Path, bool]]:
    """Each input path with whether it is JSONL; a missing file is an error naming it."""
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"input {path}: no such file")
        yield path, path.suffix in (".jsonl", ".json")


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 JSONL file; other bytes are an error naming the file and the line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{n}: not UTF-8 text ({err.reason} at byte {err.start} of the line); "
                                 f"JSONL inputs must be UTF-8") from None


def iter_records(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, str | dict]]:
    """Yield (where, record): JSONL lines as raw strings (parsed in workers), text files as {"text": ...}."""
    for path, is_jsonl in _input_files(paths):
        if is_jsonl:
            for n, line in _jsonl_lines(path):
                if line.strip():
                    yield f"{path}:{n}", line
        else:
            yield str(path), {"text": path.read_text(encoding="utf-8", errors="replace")}


def count_records(paths: Iterable[str | os.PathLike]) -> int:
    """Number of records `iter_records` will yield (a cheap first pass, for the progress bar's total)."""
    total = 0
    for path, is_jsonl in _input_files(paths):
        if is_jsonl:
            total += sum(1 for _, line in _jsonl_lines(path) if line.strip())
        else:
            total += 1
    return total


def _init_pool_worker(config: SampleConfig) -> None:
    """A pool worker dies with tide-preprocess (a killed run leaves no orphan) and builds its own SampleBuilder."""
    die_with_parent()
    _init_worker(config)


def _init_worker(config: SampleConfig) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = SampleBuilder(config)


def _process(item: tuple[str, str | dict]):
    where, record = item
    assert _WORKER is not None
    try:
        return where, _WORKER.build(_WORKER.messages_from_record(record)), None
    except SampleError as e:
        return where, None, e
    except Exception as e:  # an unexpected failure: stop the run, naming the record that caused it
        raise RuntimeError(f"{where}: {type(e).__name__}: {e}") from e


def preprocess(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: SampleConfig,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    chunksize: int = 8,
) -> PreprocessSummary:
    """Build the dataset at `out_dir` (atomically) and return the summary of kept/dropped samples."""
    from tqdm import tqdm

    total = count_records(inputs)
    records = iter_records(inputs)  # streamed: inputs never sit in memory whole
    summary = PreprocessSummary()
    _init_worker(config)  # fail fast on bad tokenizer/template flags, in this process
    fields = ("student_ids", "student_labels", "teacher_ids", config.align)
    with DatasetWriter(out_dir, fields=fields, overwrite=overwrite) as writer:
        if workers > 1:
            # single-string encodes gain nothing from Rust-side threads; this also keeps fork() safe
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            pool = mp.get_context("fork").Pool(workers, initializer=_init_pool_worker, initargs=(config,))
            results = pool.imap(_process, records, chunksize=chunksize)
        else:
            pool = None
            results = map(_process, records)
        try:
            for where, sample, err in tqdm(results, total=total, disable=not progress, file=sys.stderr,
                                           desc="tide-preprocess", unit="sample"):
                if err is not None:
                    summary.dropped[err.reason] += 1
                    summary.examples.setdefault(err.reason, f"{where}: {err}")
                    continue
                writer.add(sample)
                summary.kept += 1
                summary.student_tokens += len(sample["student_ids"])
                summary.teacher_tokens += len(sample["teacher_ids"])
                n_align = len(sample["chunks"]) // 4 if config.align == "chunks" else len(sample["pairs"]) // 2
                summary.chunks += len(sample["chunks"]) // 4
                summary.pairs += len(sample["pairs"]) // 2
                summary.kept_without_alignment += int(n_align == 0)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        if summary.kept == 0:
            raise ValueError(f"no sample could be built from {[str(p) for p in inputs]}:\n{summary.render()}")
        builder = _WORKER
        writer.meta = {
            "format": "tide-aligned-v1",
            "config": config.to_json(),
            "summary": summary.as_dict(),
            "student": {"vocab_size": builder.student.vocab_size, "mask_id": builder.student.mask_id,
                        "eos_id": builder.student.eos_id, "pad_id": builder.student.pad_id,
                        "fingerprint": tokenizer_fingerprint(builder.student)},  # checked at start-up
            "teacher": {"vocab_size": builder.teacher.vocab_size, "mask_id": builder.teacher.mask_id,
                        "eos_id": builder.teacher.eos_id, "pad_id": builder.teacher.pad_id,
                        "fingerprint": tokenizer_fingerprint(builder.teacher)},
        }
    return summary
