"""Likelihood bounds of a BD3LM student: held-out bits per byte, and conditional NELBOs for the harness.

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

:func:`conditional_nelbo` is the same bound for a continuation given a clean context (only the
continuation is maskable): the lm-evaluation-harness model's ``loglikelihood`` (eval/harness/model.py).
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
            nll = _masked_nll(full_forward, x0, m, mask_id, positions.expand(b, -1), attn.expand(b, -1, -1))
            nelbo_nats += float((nll.sum(1) / t).sum()) / draws
            masked_nats += float(nll.sum())
            masked_bytes += int(nbytes[m].sum())
            masked_tokens += int(m.sum())
    total_bytes = sum(sum(w.token_bytes) for w in windows)
    return BpbReport(elbo_bpb=nelbo_nats / math.log(2) / max(1, total_bytes),
                     masked_bpb=masked_nats / math.log(2) / max(1, masked_bytes), windows=len(windows),
                     tokens=len(windows) * seq_len, bytes=total_bytes, draws_per_window=draws,
                     masked_tokens=masked_tokens)


def _masked_nll(full_forward: FullForward, x0: torch.Tensor, m: torch.Tensor, mask_id: int,
                positions: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """-log p(x0_i | [xt ; x0]) at the masked positions ``m`` (0 elsewhere), float64 on CPU, ``[b, L]``.

    xt = x0 with ``m`` replaced by the mask id; the log-softmax runs in fp32 whatever the model dtype.
    """
    xt = torch.where(m, torch.full_like(x0, mask_id), x0)
    logits = full_forward(torch.cat([xt, x0], 1), positions, attn)[:, :x0.shape[1]]
    target = x0.to(logits.device)[..., None]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target).squeeze(-1).double().cpu()
    return torch.where(m, -logp, torch.zeros_like(logp))


def padded_block_diffusion_mask(valid: torch.Tensor, block_size: int) -> torch.Tensor:
    """Bool ``[b, 2L, 2L]``: the block-diffusion mask over [xt ; x0] with padding hidden.

    ``valid`` ``[b, L]`` marks real tokens (right padding). Pad keys are visible to no query, and a pad
    query sees only itself, so a real token's prediction does not depend on how much padding follows.
    """
    b, L = valid.shape
    key_valid = torch.cat([valid, valid], 1)
    mask = block_diffusion_mask(L, block_size, "xt_x0")[None] & key_valid[:, None, :]
    eye = torch.eye(2 * L, dtype=torch.bool)[None]
    return mask | (eye & ~key_valid[:, :, None])


def _pack(sequences: Sequence[Sequence[int]], scored_from: Sequence[int], block_size: int
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to a common block multiple: (ids, valid, scored = tail positions), all ``[b, L]``."""
    width = math.ceil(max(len(s) for s in sequences) / block_size) * block_size
    x0 = torch.zeros((len(sequences), width), dtype=torch.long)
    valid = torch.zeros_like(x0, dtype=torch.bool)
    scored = torch.zeros_like(x0, dtype=torch.bool)
    for i, (seq, start) in enumerate(zip(sequences, scored_from)):
        x0[i, :len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        valid[i, :len(seq)] = True
        scored[i, start:len(seq)] = True
    return x0, valid, scored


@torch.no_grad()
def conditional_nelbo(full_forward: FullForward, sequences: Sequence[Sequence[int]], scored_from: Sequence[int],
                      mask_id: int, block_size: int, draws: int, generators: Sequence[torch.Generator]
                      ) -> list[float]:
    """BD3LM negative ELBO (nats) of each sequence's tail ``seq[scored_from:]`` given its head (§1.3-§1.5).

    An upper bound on -log p(tail | head), not the exact value: the head stays clean, each tail token
    is masked with probability t and the masked ones are scored with weight 1/t, over ``draws``
    stratified t_k = max(eps, (k + u)/draws). Blocks start at position 0 of the sequence (as in
    training); the sequences are right-padded to a common block multiple with padding hidden
    (:func:`padded_block_diffusion_mask`). Each sequence draws u and its masks from its own generator,
    so its value does not depend on the batch it is in.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if len(generators) != len(sequences) or len(scored_from) != len(sequences):
        raise ValueError("conditional_nelbo: one scored_from and one generator per sequence")
    x0, valid, scored = _pack(sequences, scored_from, block_size)
    b, width = x0.shape
    attn = padded_block_diffusion_mask(valid, block_size)
    positions = torch.arange(width).repeat(2).expand(b, -1)
    u = torch.empty(b, dtype=torch.float64)
    noise = torch.ones((draws, b, width), dtype=torch.float64)  # drawn per sequence at its own length
    for i, (g, seq) in enumerate(zip(generators, sequences)):
        u[i] = torch.rand((), generator=g, dtype=torch.float64)
        noise[:, i, :len(seq)] = torch.rand((draws, len(seq)), generator=g, dtype=torch.float64)
    nelbo = torch.zeros(b, dtype=torch.float64)
    for k in range(draws):
        t = ((k + u) / draws).clamp_min(T_EPS)
        m = (noise[k] < t[:, None]) & scored
        nelbo += _masked_nll(full_forward, x0, m, mask_id, positions, attn).sum(1) / t / draws
    return nelbo.tolist()


@torch.no_grad()
def greedy_matches(full_forward: FullForward, sequences: Sequence[Sequence[int]], scored_from: Sequence[int],
                   mask_id: int, block_size: int) -> list[bool]:
    """Whether each tail ``seq[scored_from:]`` is the argmax at every position when the whole tail is masked."""
    x0, valid, scored = _pack(sequences, scored_from, block_size)
    b, width = x0.shape
    xt = torch.where(scored, torch.full_like(x0, mask_id), x0)
    logits = full_forward(torch.cat([xt, x0], 1), torch.arange(width).repeat(2).expand(b, -1),
                          padded_block_diffusion_mask(valid, block_size))[:, :width]
    hit = logits.float().argmax(-1).cpu() == x0
    return [bool(hit[i][scored[i]].all()) for i in range(b)]


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
