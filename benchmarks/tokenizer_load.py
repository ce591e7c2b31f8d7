"""Tokenizer load time: GGUF/SentencePiece conversion (baseline) vs the cached tokenizer.json, in one run.

    python benchmarks/tokenizer_load.py --names qwen2 gpt-2 mistral-v1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from tide_megatron.fixtures import artifacts
from tide_megatron.align.tokenizers import load_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", nargs="+", default=["qwen2", "gpt-2", "mistral-v1"])
    args = p.parse_args()
    sources = artifacts.fetch_artifacts()  # the vocabularies themselves stay in the shared cache
    shared = artifacts.cache_dir()
    for name in args.names:
        with tempfile.TemporaryDirectory() as tmp:
            # an empty cache for the converted tokenizer.json, with links to the fetched vocabularies
            for key, folder in sources.items():
                link = os.path.join(tmp, artifacts.SOURCES[key].folder)
                if not os.path.exists(link):
                    os.symlink(folder, link)
            os.environ["TIDE_CACHE_DIR"] = tmp
            start = time.perf_counter()
            cold = load_tokenizer(name, cache=False)
            convert_s = time.perf_counter() - start
            start = time.perf_counter()
            warm = load_tokenizer(name, cache=False)
            cached_s = time.perf_counter() - start
            os.environ["TIDE_CACHE_DIR"] = str(shared)
        text = "def f(x):\n    return x + 1  # naïve\n" * 50
        assert cold.encode(text).ids == warm.encode(text).ids
        print(f"{name:12s} vocab {len(warm):7d}: convert {convert_s:6.2f} s, cached tokenizer.json {cached_s:5.2f} s "
              f"({convert_s / cached_s:.1f}x faster)")


if __name__ == "__main__":
    main()
