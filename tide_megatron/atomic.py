"""Write files and directories so that a reader never sees a half-written one: stage beside, then rename.

`staged_path(final)` yields a temporary sibling of ``final`` (a file path, or an empty directory) and puts
it at ``final`` when the block succeeds, or removes it when the block raises. `publish(staged, final)` is
that last step alone, for callers that stage in their own way (e.g. a checkpoint written by every rank).
`write_text_atomic(path, text)` is the one-line form for small text and JSON files.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def publish(staged: PathLike, final: PathLike, replace: bool = True) -> bool:
    """Rename a finished file or directory ``staged`` to ``final``; returns whether ``staged`` took its place.

    A file replaces ``final`` in one rename. A directory already at ``final`` is first moved aside and removed
    after, so ``final`` always holds one complete version. With ``replace=False`` an existing ``final`` is kept
    (another writer got there first: a cache filled concurrently) and ``staged`` is removed.
    """
    staged, final = Path(staged), Path(final)
    if not replace:
        try:
            if not final.exists():
                os.rename(staged, final)
                return True
        except OSError:  # created by the other writer between the check and the rename
            if not final.exists():
                raise
        _remove(staged)
        return False
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        os.rename(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    return True


@contextmanager
def staged_path(final: PathLike, directory: bool = False, replace: bool = True) -> Iterator[Path]:
    """A temporary sibling of ``final`` (same suffix; an empty directory with ``directory=True``), published at
    ``final`` when the block succeeds (see `publish`) and removed when it raises."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{uuid.uuid4().hex[:8]}{final.suffix}")
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        publish(tmp, final, replace=replace)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """``Path(path).write_text(text)``, but a reader sees either the old content or the whole new one."""
    with staged_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
