"""Real tokenizers for the unit tests: fetched once per machine from registry sdists (see fixtures/artifacts.py)."""

import pytest

from tide_megatron.fixtures import artifacts
from tide_megatron.align.tokenizers import TideTokenizer, load_tokenizer

_LOADED: dict[str, TideTokenizer] = {}


@pytest.fixture(scope="session")
def real_artifacts():
    try:
        return artifacts.fetch_artifacts()
    except artifacts.ArtifactFetchError as e:  # only when the package registry is unreachable
        pytest.skip(f"real tokenizer artifacts unavailable (package registry unreachable?): {e}")


@pytest.fixture(scope="session")
def tok(real_artifacts):
    """`tok("qwen2")` -> a loaded TideTokenizer, shared by the whole session."""

    def get(name: str) -> TideTokenizer:
        if name not in _LOADED:
            _LOADED[name] = load_tokenizer(name)
        return _LOADED[name]

    return get
