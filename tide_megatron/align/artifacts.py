"""Real tokenizer files shipped inside registry source distributions, fetched once into a cache (DESIGN §5).

No model hub is reachable from test machines, but several PyPI sdists carry real vocabularies: llama.cpp's
`ggml-vocab-*.gguf` files (Qwen2, GPT-2, Llama-3 BPE, BERT WordPiece, Llama SentencePiece, with `.inp/.out`
reference tokenizations) inside `llama-cpp-python`, SentencePiece models in `mistral-common` and `sentencepiece`. `fetch_artifacts()` downloads
each sdist with pip, extracts only the wanted members into a temporary folder and renames it into place, so an
interrupted fetch never leaves a half-populated cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tide_megatron.atomic import publish


def cache_dir() -> Path:
    """The shared artifact cache: `$TIDE_CACHE_DIR`, else `~/.cache/tide-megatron`."""
    return Path(os.environ.get("TIDE_CACHE_DIR") or Path.home() / ".cache" / "tide-megatron")


@dataclass(frozen=True)
class SdistSource:
    """One pinned source distribution and the archive members (by suffix match) to keep from it."""

    name: str
    version: str
    member_suffixes: tuple[str, ...]
    folder: str  # sub-folder of the cache that receives the flattened members

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


_GGUF_VOCABS = ("qwen2", "gpt-2", "llama-bpe", "llama-spm", "bert-bge", "starcoder", "phi-3")

SOURCES: dict[str, SdistSource] = {
    "llama.cpp-vocabs": SdistSource(
        "llama-cpp-python",
        "0.3.36",
        tuple(f"vendor/llama.cpp/models/ggml-vocab-{v}.gguf{ext}" for v in _GGUF_VOCABS for ext in ("", ".inp", ".out")),
        "gguf-vocabs",
    ),
    "mistral-spm": SdistSource(
        "mistral-common", "1.13.1", ("mistral_common/data/tokenizer.model.v1",), "sentencepiece"
    ),
    "sentencepiece-tests": SdistSource(
        "sentencepiece", "0.2.3", ("test/botchan_en_bpe_1000.model", "test/botchan_en_unigram_1000.model"), "sentencepiece"
    ),
}


class ArtifactFetchError(RuntimeError):
    """The package registry could not be reached or the sdist lacked an expected file."""


def _download_sdist(src: SdistSource, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           "--disable-pip-version-check", "-d", str(into), src.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archives = [p for p in into.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    if proc.returncode != 0 or not archives:
        raise ArtifactFetchError(f"pip download {src.requirement} failed: {proc.stderr.strip()[-500:]}")
    return archives[0]


def _extract_members(archive: Path, src: SdistSource, out: Path) -> None:
    wanted = set(src.member_suffixes)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            hit = next((s for s in wanted if member.name.endswith("/" + s)), None)
            if hit is None or not member.isfile():
                continue
            fobj = tar.extractfile(member)
            assert fobj is not None
            (out / Path(hit).name).write_bytes(fobj.read())
            wanted.discard(hit)
    if wanted:
        raise ArtifactFetchError(f"{archive.name}: members not found: {sorted(wanted)}")


def fetch_source(key: str) -> Path:
    """Make sure the files of `SOURCES[key]` are in the cache; return their folder. Idempotent and atomic."""
    src = SOURCES[key]
    root = cache_dir()
    final = root / src.folder
    marker = final / f".complete-{src.name}-{src.version}"
    if marker.exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "dl").mkdir()
        archive = _download_sdist(src, tmp_path / "dl")
        staged = tmp_path / "staged"
        staged.mkdir()
        _extract_members(archive, src, staged)
        marker_name = marker.name
        (staged / marker_name).touch()
        if final.exists():  # another source shares the folder: move files in one by one (each rename atomic)
            for f in staged.iterdir():
                if f.name != marker_name:
                    publish(f, final / f.name)
            publish(staged / marker_name, marker)
        else:
            publish(staged, final, replace=False)  # a concurrent fetch may have won the race
    return final


def fetch_artifacts(keys: tuple[str, ...] = tuple(SOURCES)) -> dict[str, Path]:
    """Fetch every listed source (default: all) and return key -> folder."""
    return {k: fetch_source(k) for k in keys}


def gguf_vocab_path(name: str) -> Path:
    """Path of `ggml-vocab-<name>.gguf` (e.g. "qwen2", "gpt-2", "llama-bpe", "bert-bge", "llama-spm")."""
    return fetch_source("llama.cpp-vocabs") / f"ggml-vocab-{name}.gguf"


def remove_cached(key: str) -> None:
    """Delete a source's cached folder (used to re-fetch after a corrupted cache)."""
    shutil.rmtree(cache_dir() / SOURCES[key].folder, ignore_errors=True)
