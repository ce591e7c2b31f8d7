"""Attention masks as structured descriptions, so each core attention picks the kernel the mask allows.

A mask travels from the model's forward to the core attention as one of these objects (megatron-core
passes ``attention_mask`` through its layers untouched). Each can expand itself to the dense bool mask
(SDPA, the CPU path), describe itself to FlexAttention as a ``mask_mod`` (block-diffusion masks on GPU),
or, for key padding, to Transformer Engine's fused padding attention (DESIGN §3):

- `BlockDiffusionMask`: per-token segment and block id (+ key validity), the rule of spec §1.4 / §2.2 for
  ``[xt ; x0]``, ``[x0 ; xt]``, several xt passes, and the compacted inputs of ``training/compact.py``.
- `KeyPaddingMask`: every query sees every valid key (LLaDA2, §2.1; pitfall §9.17).

Both use the public convention (True = may attend); `blocked()` gives megatron's (True = masked out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

Order = Literal["xt_x0", "x0_xt"]

#: Segment codes: padding, the clean half; xt passes are 1, 2, ...
PAD_SEGMENT, X0_SEGMENT = -1, 0


def block_diffusion_allowed(q_seg: torch.Tensor, q_blk: torch.Tensor, k_seg: torch.Tensor,
                            k_blk: torch.Tensor) -> torch.Tensor:
    """The block-diffusion rule on broadcastable (query, key) segment and block ids (§1.4, §2.2):
    x0 sees x0 blocks up to its own (M_BD + M_BC); xt of pass p sees x0 blocks before its own (M_OBC) and its
    own block of pass p (M_BD); nothing else. Padding (segment -1) is handled by the caller."""
    q_x0, k_x0 = q_seg == X0_SEGMENT, k_seg == X0_SEGMENT
    q_xt = q_seg > X0_SEGMENT
    return (q_x0 & k_x0 & (k_blk <= q_blk)) | (q_xt & k_x0 & (k_blk < q_blk)) | (q_xt & (k_seg == q_seg) & (q_blk == k_blk))


class AttentionMaskSpec:
    """What every mask description offers the core attentions (see the module docstring)."""

    batch: int
    seq_len: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape of the dense mask this stands for: [b, 1, S, S]."""
        return (self.batch, 1, self.seq_len, self.seq_len)

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def dense_allowed(self) -> torch.Tensor:
        """bool [b, 1, S, S], True = may attend."""
        return self.allowed_rows(0, self.seq_len)[:, None]

    def allowed_rows(self, start: int, stop: int) -> torch.Tensor:
        """bool [b, stop - start, S]: the query rows ``start .. stop-1`` of the dense mask (True = may attend),
        so a block mask can be built a band of rows at a time (models/flex_attention.py)."""
        raise NotImplementedError

    def blocked(self) -> torch.Tensor:
        """bool [b, 1, S, S] in megatron's core-attention convention (True = masked out); built once per mask."""
        key = ("blocked", str(self.device))
        if key not in self._cache:
            self._cache[key] = ~self.dense_allowed()
        return self._cache[key]

    def mask_mod(self):
        """FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (True = may attend)."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "AttentionMaskSpec":
        raise NotImplementedError

    def __getitem__(self, rows: slice) -> "AttentionMaskSpec":
        """The description of sequences ``rows`` of the batch (e.g. one pipeline micro-batch)."""
        raise NotImplementedError

    def padded(self, extra: int) -> "AttentionMaskSpec":
        """Append ``extra`` padding tokens per sequence: nothing attends to them, they see what padding sees."""
        raise NotImplementedError

    def check(self, batch: int, seq_len: int) -> None:
        """A clear error when this mask does not describe a [batch, seq_len] input."""
        if self.seq_len != seq_len or self.batch not in (1, batch):
            raise ValueError(f"{type(self).__name__} describes [b={self.batch}, S={self.seq_len}] but the input is "
                             f"[b={batch}, S={seq_len}]")


def _check_tokens(name: str, t: torch.Tensor, like: torch.Tensor, dtype_ok) -> None:
    if t.dim() != 2 or t.shape != like.shape:
        raise ValueError(f"{name} must be [b, S] = {tuple(like.shape)}, got {tuple(t.shape)}")
    if not dtype_ok(t.dtype):
        raise ValueError(f"{name} has dtype {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device}, the other mask tensors on {like.device}")


@dataclass(eq=False)
class BlockDiffusionMask(AttentionMaskSpec):
    """Per-token ``segment`` (int [b, S]: -1 padding, 0 = x0, p >= 1 = the xt half of pass p), original ``block``
    id (int [b, S]) and optional ``key_valid`` (bool [b, S]; False = batch padding inside a segment).

    Padding queries see only themselves, so no row is empty (the codes of ``training/compact.py``).
    """

    segment: torch.Tensor
    block: torch.Tensor
    key_valid: Optional[torch.Tensor] = None
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.segment.dim() != 2:
            raise ValueError(f"BlockDiffusionMask.segment must be [b, S], got {tuple(self.segment.shape)}")
        integer = lambda dt: not dt.is_floating_point and dt != torch.bool  # noqa: E731
        _check_tokens("BlockDiffusionMask.segment", self.segment, self.segment, integer)
        _check_tokens("BlockDiffusionMask.block", self.block, self.segment, integer)
        if self.key_valid is not None:
            _check_tokens("BlockDiffusionMask.key_valid", self.key_valid, self.segment, lambda dt: dt == torch.bool)
        self.batch, self.seq_len = self.segment.shape

    @classmethod
    def halves(cls, batch: int, L: int, block_size: int, order: Order = "xt_x0",
               device: torch.device | str | None = None) -> "BlockDiffusionMask":
        """The ``[xt ; x0]`` (or ``[x0 ; xt]``) mask of length 2L for ``batch`` sequences (§1.4)."""
        if block_size < 1 or L < 1 or L % block_size:
            raise ValueError(f"L={L} must be a positive multiple of block_size={block_size}")
        if order not in ("xt_x0", "x0_xt"):
            raise ValueError(f"order must be 'xt_x0' or 'x0_xt', got {order!r}")
        idx = torch.arange(2 * L, device=device)
        first = idx < L
        xt = first if order == "xt_x0" else ~first
        segment = torch.where(xt, 1, X0_SEGMENT)
        block = (idx % L) // block_size
        return cls(segment[None].expand(batch, 2 * L), block[None].expand(batch, 2 * L))

    @property
    def device(self) -> torch.device:
        return self.segment.device

    def allowed_rows(self, start: int, stop: int) -> torch.Tensor:
        seg, blk = self.segment, self.block
        q_seg = seg[:, start:stop, None]
        allowed = block_diffusion_allowed(q_seg, blk[:, start:stop, None], seg[:, None, :], blk[:, None, :])
        if self.key_valid is not None:
            allowed = allowed & self.key_valid[:, None, :]
        q_idx = torch.arange(start, stop, device=seg.device)[:, None]
        diagonal = q_idx == torch.arange(self.seq_len, device=seg.device)[None, :]
        return allowed | (diagonal[None] & (q_seg == PAD_SEGMENT))

    def mask_mod(self):
        seg, blk, valid = self.segment, self.block, self.key_valid

        def mask_mod(b, h, q_idx, kv_idx):
            q_seg, k_seg = seg[b, q_idx], seg[b, kv_idx]
            allowed = block_diffusion_allowed(q_seg, blk[b, q_idx], k_seg, blk[b, kv_idx])
            if valid is not None:
                allowed = allowed & valid[b, kv_idx]
            return allowed | ((q_seg == PAD_SEGMENT) & (q_idx == kv_idx))

        return mask_mod

    def to(self, device: torch.device | str) -> "BlockDiffusionMask":
        if torch.device(device) == self.device:
            return self
        kv = None if self.key_valid is None else self.key_valid.to(device, non_blocking=True)
        return BlockDiffusionMask(self.segment.to(device, non_blocking=True), self.block.to(device, non_blocking=True), kv)

    def __getitem__(self, rows: slice) -> "BlockDiffusionMask":
        kv = None if self.key_valid is None else self.key_valid[rows]
        return BlockDiffusionMask(self.segment[rows], self.block[rows], kv)

    def padded(self, extra: int) -> "BlockDiffusionMask":
        if extra <= 0:
            return self
        pad = lambda t, v: torch.cat([t, t.new_full((self.batch, extra), v)], 1)  # noqa: E731
        kv = None if self.key_valid is None else pad(self.key_valid, False)
        return BlockDiffusionMask(pad(self.segment, PAD_SEGMENT), pad(self.block, -1), kv)


@dataclass(eq=False)
class KeyPaddingMask(AttentionMaskSpec):
    """Bidirectional attention over the valid keys: ``key_valid`` bool [b, S] (None = no padding at all).

    Padding queries see the valid keys too; their outputs are ignored (§9.17). Transformer Engine's fused
    padding attention takes this as its ``padding`` mask type when the padding is at the end of each row.
    """

    key_valid: Optional[torch.Tensor]
    batch: int = 0
    seq_len: int = 0
    where: Optional[torch.device] = None  # the device without key_valid (None: cpu)
    _cache: dict = field(default_factory=dict, init=False, repr=False)
    _right_padded: Optional[bool] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.key_valid is not None:
            _check_tokens("KeyPaddingMask.key_valid", self.key_valid, self.key_valid, lambda dt: dt == torch.bool)
            self.batch, self.seq_len = self.key_valid.shape
        elif self.batch < 1 or self.seq_len < 1:
            raise ValueError("KeyPaddingMask without key_valid needs batch and seq_len")

    @classmethod
    def from_attention_mask(cls, attention_mask: Optional[torch.Tensor], batch: int, seq_len: int) -> "KeyPaddingMask":
        """From a 0/1 (or bool) [b, S] attention mask (1 = real token), as tokenizers return it.

        One device sync: a mask without any padding becomes ``key_valid=None`` (no mask at all).
        """
        if attention_mask is None:
            return cls(None, batch, seq_len)
        if attention_mask.shape != (batch, seq_len):
            raise ValueError(f"key-padding attention_mask must be [b, L] = {(batch, seq_len)}, "
                             f"got {tuple(attention_mask.shape)}")
        valid = attention_mask.bool()
        return cls(None if bool(valid.all()) else valid, batch, seq_len, valid.device)

    @property
    def device(self) -> torch.device:
        if self.key_valid is not None:
            return self.key_valid.device
        return torch.device(self.where or "cpu")

    @property
    def has_padding(self) -> bool:
        return self.key_valid is not None

    @property
    def right_padded(self) -> bool:
        """Every row's valid keys form a prefix (what TE's fused padding kernels assume); cached, one sync."""
        if self._right_padded is None:
            if self.key_valid is None:
                self._right_padded = True
            else:
                count = self.key_valid.sum(-1, keepdim=True)
                prefix = torch.arange(self.seq_len, device=self.key_valid.device)[None] < count
                self._right_padded = bool((prefix == self.key_valid).all())
        return self._right_padded

    def te_padding_mask(self) -> Optional[torch.Tensor]:
        """bool [b, 1, 1, S], True = padding (Transformer Engine's ``padding`` mask); None without padding."""
        return None if self.key_valid is None else ~self.key_valid[:, None, None, :]

    def dense_allowed(self) -> torch.Tensor:
        if self.key_valid is None:
            return torch.ones(self.shape, dtype=torch.bool, device=self.device)
        return self.key_valid[:, None, None, :].expand(self.shape)

    def allowed_rows(self, start: int, stop: int) -> torch.Tensor:
        shape = (self.batch, stop - start, self.seq_len)
        if self.key_valid is None:
            return torch.ones(shape, dtype=torch.bool, device=self.device)
        return self.key_valid[:, None, :].expand(shape)

    def mask_mod(self):
        valid = self.key_valid
        if valid is None:
            return lambda b, h, q_idx, kv_idx: q_idx >= 0
        return lambda b, h, q_idx, kv_idx: valid[b, kv_idx]

    def to(self, device: torch.device | str) -> "KeyPaddingMask":
        if torch.device(device) == self.device:
            return self
        if self.key_valid is None:
            return KeyPaddingMask(None, self.batch, self.seq_len, torch.device(device))
        return KeyPaddingMask(self.key_valid.to(device, non_blocking=True), self.batch, self.seq_len)

    def __getitem__(self, rows: slice) -> "KeyPaddingMask":
        if self.key_valid is None:
            return KeyPaddingMask(None, len(range(self.batch)[rows]), self.seq_len, self.where)
        return KeyPaddingMask(self.key_valid[rows])

    def padded(self, extra: int) -> "KeyPaddingMask":
        if extra <= 0:
            return self
        valid = self.key_valid
        if valid is None:
            valid = torch.ones(self.batch, self.seq_len, dtype=torch.bool, device=self.device)
        return KeyPaddingMask(torch.cat([valid, valid.new_zeros(self.batch, extra)], 1))
