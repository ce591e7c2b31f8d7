"""Held-out likelihood of a BD3LM student in bits per byte, comparable across tokenizers.

For a window x0 of L tokens (L a multiple of the block size B) covering ``n_bytes`` UTF-8 bytes, the
BD3LM negative ELBO with the linear schedule (§1.3-§1.5) is

    NELBO(x0) = E_t [ (1/t) * sum_i m_i * (-log p(x0_i | [xt ; x0], block-diffusion mask)) ],

an upper bound on -log p(x0) in nats, where m_i ~ Bernoulli(t) (§1.3) and the model reads [xt ; x0]
with duplicated position ids under the block-diffusion mask (§1.4). We estimate it with K stratified
draws t_k = max(eps, (k + u)/K), u ~ U[0,1) per window (unbiased; one t per window, shared by its
blocks, as in training), and report

- ``elbo_bpb``  = sum over windows of NELBO / ln 2 / sum of n_bytes (the headline: a bound on the
  text's code length per byte, so a bigger vocabulary gains nothing by having fewer tokens);
- ``masked_bpb`` = (sum of masked-token NLL in nats) / ln 2 / (UTF-8 bytes those masked tokens cover),
  over the same draws: the per-byte loss on masked tokens, a plainer but t-dependent figure.

Each token covers the bytes from the end of the previous token to its own end (offsets from the
tokenizer), so the bytes of a window add up exactly to the text it covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from tide_megatron.diffusion.masks import block_diffusion_mask

FullForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
T_EPS = 1e-3  # time_epsilon of §1.3


@dataclass
class Window:
    """One evaluation sequence: token ids and the UTF-8 bytes each token covers."""

    ids: list[int]
    token_bytes: list[int]


@dataclass
class BpbReport:
    elbo_bpb: float
    masked_bpb: float
    windows: int
    tokens: int
    bytes: int
    draws_per_window: int
    masked_tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(1, self.tokens)


def tokenize_with_bytes(tokenizer, text: str) -> Window:
    """Tokenize ``text`` (no special tokens) and attribute its UTF-8 bytes to tokens via offsets."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc.get("offset_mapping") if hasattr(enc, "get") else None
    if offsets is None:
        raise ValueError("tokenizer: a fast tokenizer with return_offsets_mapping is needed for bits per byte")
    byte_end_of_char = [0]
    for ch in text:
        byte_end_of_char.append(byte_end_of_char[-1] + len(ch.encode("utf-8")))
    token_bytes, prev = [], 0
    for _, end in offsets:
        end_b = byte_end_of_char[end]
        token_bytes.append(max(0, end_b - prev))
        prev = max(prev, end_b)
    return Window(list(enc["input_ids"]), token_bytes)


def split_windows(doc: Window, seq_len: int) -> list[Window]:
    """Consecutive full windows of ``seq_len`` tokens (a trailing partial window is dropped)."""
    return [Window(doc.ids[s:s + seq_len], doc.token_bytes[s:s + seq_len])
            for s in range(0, len(doc.ids) - seq_len + 1, seq_len)]


@torch.no_grad()
def bits_per_byte(full_forward: FullForward, windows: Sequence[Window], mask_id: int, block_size: int,
                  draws: int = 4, batch_size: int = 4, seed: int = 0,
                  generator: Optional[torch.Generator] = None) -> BpbReport:
    """Monte Carlo BD3LM NELBO in bits per byte over ``windows`` (see the module docstring)."""
    if not windows:
        raise ValueError("windows: no held-out window to evaluate (text shorter than seq_len?)")
    seq_len = len(windows[0].ids)
    if seq_len % block_size:
        raise ValueError(f"seq_len {seq_len} must be a multiple of block_size {block_size}")
    if any(len(w.ids) != seq_len for w in windows):
        raise ValueError("windows: every window must have the same length")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    gen = generator or torch.Generator().manual_seed(seed)
    attn = block_diffusion_mask(seq_len, block_size, "xt_x0")
    positions = torch.arange(seq_len).repeat(2)
    nelbo_nats = masked_nats = 0.0
    masked_bytes = masked_tokens = 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        x0 = torch.tensor([w.ids for w in chunk], dtype=torch.long)
        nbytes = torch.tensor([w.token_bytes for w in chunk], dtype=torch.float64)
        b = x0.shape[0]
        u = torch.rand(b, generator=gen, dtype=torch.float64)
        for k in range(draws):
            t = ((k + u) / draws).clamp_min(T_EPS)
            m = torch.rand(b, seq_len, generator=gen, dtype=torch.float64) < t[:, None]
            xt = torch.where(m, torch.full_like(x0, mask_id), x0)
            logits = full_forward(torch.cat([xt, x0], 1), positions.expand(b, -1),
                                  attn.expand(b, -1, -1))[:, :seq_len]
            target = x0.to(logits.device)[..., None]
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target).squeeze(-1).double().cpu()
            nll = torch.where(m, -logp, torch.zeros_like(logp))
            nelbo_nats += float((nll.sum(1) / t).sum()) / draws
            masked_nats += float(nll.sum())
            masked_bytes += int(nbytes[m].sum())
            masked_tokens += int(m.sum())
    total_bytes = sum(sum(w.token_bytes) for w in windows)
    return BpbReport(elbo_bpb=nelbo_nats / math.log(2) / max(1, total_bytes),
                     masked_bpb=masked_nats / math.log(2) / max(1, masked_bytes), windows=len(windows),
                     tokens=len(windows) * seq_len, bytes=total_bytes, draws_per_window=draws,
                     masked_tokens=masked_tokens)


def read_heldout_text(paths: Sequence[str], max_bytes: Optional[int] = None,
                      suffixes: tuple[str, ...] = (".py", ".rst", ".txt", ".md")) -> list[str]:
    """Documents from files and directories (recursively, sorted, by suffix), up to ``max_bytes``."""
    import os

    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names) if n.endswith(suffixes)]
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"--heldout: no such file or directory: {path}")
    docs, used = [], 0
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        if max_bytes is not None and used + len(text.encode("utf-8")) > max_bytes:
            text = text.encode("utf-8")[: max_bytes - used].decode("utf-8", errors="ignore")
        if text:
            docs.append(text)
            used += len(text.encode("utf-8"))
        if max_bytes is not None and used >= max_bytes:
            break
    if not docs:
        raise ValueError(f"--heldout: no text found in {list(paths)} (looked for {', '.join(suffixes)})")
    return docs
