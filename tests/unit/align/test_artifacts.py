"""Artifact fetching: only the listed sdist members land in the cache, atomically (no partial folder on failure)."""

import io
import tarfile

import pytest

from tide_megatron.align import artifacts


def _fake_sdist(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIDE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_extracts_only_wanted_members(cache, tmp_path, monkeypatch):
    src = artifacts.SOURCES["mistral-spm"]
    archive = _fake_sdist(tmp_path / "pkg.tar.gz", {
        "mistral_common-1.13.1/src/mistral_common/data/tokenizer.model.v1": b"model-bytes",
        "mistral_common-1.13.1/src/mistral_common/data/other.json": b"{}",
    })
    calls = []
    monkeypatch.setattr(artifacts, "_download_sdist", lambda s, into: calls.append(s) or archive)
    folder = artifacts.fetch_source("mistral-spm")
    assert folder == cache / src.folder
    assert sorted(p.name for p in folder.iterdir()) == [f".complete-{src.name}-{src.version}", "tokenizer.model.v1"]
    assert (folder / "tokenizer.model.v1").read_bytes() == b"model-bytes"
    artifacts.fetch_source("mistral-spm")  # cached: no second download
    assert len(calls) == 1


def test_failed_fetch_leaves_nothing(cache, tmp_path, monkeypatch):
    archive = _fake_sdist(tmp_path / "pkg.tar.gz", {"pkg/unrelated.txt": b"x"})
    monkeypatch.setattr(artifacts, "_download_sdist", lambda s, into: archive)
    with pytest.raises(artifacts.ArtifactFetchError, match="members not found"):
        artifacts.fetch_source("mistral-spm")
    assert sorted(p.name for p in cache.iterdir()) == []  # no folder, no temporary left behind

    def unreachable(s, into):
        raise artifacts.ArtifactFetchError("pip download failed: network unreachable")

    monkeypatch.setattr(artifacts, "_download_sdist", unreachable)
    with pytest.raises(artifacts.ArtifactFetchError, match="unreachable"):
        artifacts.fetch_source("llama.cpp-vocabs")
    assert sorted(p.name for p in cache.iterdir()) == []
