"""Text generation with the BD3LM sampler, generation throughput and peak memory (§7.2-§7.3, §8).

Throughput counts decoded positions (every token the sampler committed, including those after eos
in a finished block: that is the work done) and, separately, completion tokens up to the first stop id.
Peak memory is ``torch.cuda.max_memory_allocated`` on GPU (reset before the measured run) and the
process's peak resident set size on CPU (a lifetime peak that includes loading the model).
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch

from tide_megatron.diffusion.sampler import BlockDenoiser, SamplerConfig, bd3lm_generate
from tide_megatron.eval.prompts import decode_completion


@dataclass
class ThroughputReport:
    tokens_per_s: float
    completion_tokens_per_s: float
    decoded_tokens: int
    completion_tokens: int
    seconds: float
    forward_calls: int
    sequences: int
    peak_memory_bytes: int
    peak_memory_kind: str

    def as_dict(self) -> dict:
        return asdict(self)


def peak_memory() -> tuple[int, str]:
    """(bytes, kind): CUDA allocator peak on GPU, else the process's peak RSS."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_peak_rss"


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


class SamplerCompletionModel:
    """Text in, text out through a tokenizer and :func:`bd3lm_generate` (greedy by default); think
    spans are dropped from the outputs (§7.2).

    Keeps running totals (``decoded_tokens``, ``completion_tokens``, ``seconds``) for throughput.
    """

    def __init__(self, model: BlockDenoiser, tokenizer, cfg: SamplerConfig,
                 generator: Optional[torch.Generator] = None):
        self.model, self.tokenizer, self.cfg, self.generator = model, tokenizer, cfg, generator
        self.decoded_tokens = self.completion_tokens = self.forward_calls = 0
        self.seconds = 0.0

    def complete(self, prompts: Sequence[str]) -> list[str]:
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        start = time.perf_counter()
        out = bd3lm_generate(self.model, ids, self.cfg, self.generator)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.decoded_tokens += out.tokens.numel()
        self.completion_tokens += sum(len(c) for c in out.completions)
        self.forward_calls += out.forward_calls
        return [decode_completion(self.tokenizer, c) for c in out.completions]


def measure_generation(model: BlockDenoiser, prompts: Sequence[Sequence[int]], cfg: SamplerConfig,
                       batch_size: int = 1, warmup: bool = True) -> ThroughputReport:
    """Time :func:`bd3lm_generate` over ``prompts`` in batches; tokens/s and peak memory."""
    if not prompts:
        raise ValueError("prompts: expected at least one prompt to time")
    if warmup:
        bd3lm_generate(model, [prompts[0]], SamplerConfig(**{**asdict(cfg), "max_new_tokens": cfg.block_size,
                                                                "steps": 1}))
    _reset_peak()
    decoded = completion = calls = 0
    start = time.perf_counter()
    for s in range(0, len(prompts), batch_size):
        out = bd3lm_generate(model, prompts[s:s + batch_size], cfg)
        decoded += out.tokens.numel()
        completion += sum(len(c) for c in out.completions)
        calls += out.forward_calls
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    mem, kind = peak_memory()
    return ThroughputReport(tokens_per_s=decoded / seconds, completion_tokens_per_s=completion / seconds,
                            decoded_tokens=decoded, completion_tokens=completion, seconds=seconds,
                            forward_calls=calls, sequences=len(prompts), peak_memory_bytes=mem,
                            peak_memory_kind=kind)
