"""Converter outputs appear whole or not at all: a temp sibling directory renamed into place on success."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Callable, Iterator

from tide_megatron.atomic import publish


def check_output_dir(out_dir: str, flag: str) -> None:
    """Refuse to overwrite: the output must not exist yet (its parent must)."""
    if os.path.exists(out_dir):
        raise FileExistsError(f"{flag} {out_dir}: already exists; choose a new directory")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{flag} {out_dir}: parent directory {parent} does not exist")


@contextmanager
def atomic_output_dir(out_dir: str, flag: str = "--out", is_writer: bool = True,
                      barrier: Callable[[], None] = lambda: None) -> Iterator[str]:
    """Yield a temp sibling directory that becomes `out_dir` by rename only on success (no partial output).

    Multi-rank: every rank calls it; rank `is_writer` creates/renames/cleans, `barrier` syncs the ranks.
    The temp name is derived from `out_dir` so all ranks agree on it.
    """
    out_dir = os.path.abspath(out_dir)
    check_output_dir(out_dir, flag)
    tmp = f"{out_dir}.tmp-partial"
    if is_writer:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    try:
        yield tmp
        barrier()
        if is_writer:
            publish(tmp, out_dir)
        barrier()
    except BaseException:
        if is_writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
