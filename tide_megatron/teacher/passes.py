"""The teacher's side of one step: the passes of a noised micro-batch, and the engine call that serves them.

`build_teacher_passes` is a pure function of a `DistillBatch` and the teacher's ids (no process group, no
trainer state). It writes the teacher's own mask id into every CompDemo pass (§4, §9.1) and asks for one of
the two loss-sized payloads (§2, §9.21):

- chunk alignment (Pipeline A, LLaDA2, §2.1): the passes stacked ``[P*b, L_t]`` as one bidirectional batch,
  with a target only at the tokens of active chunks, each in the pass whose log-prob wins there (§5.5-5.7);
- pair alignment (Pipeline B, WeDLM, §2.2): all passes in one ``[x0 ; xt_1 ; xt_2]`` sequence that keeps only
  the xt blocks holding a distilled row and the x0 blocks before them (CompDemo's passes share their clean
  half and x0 never sees xt, §1.4), plus the rows to read; each row gets exactly the attention it would have
  in its own ``[x0 ; xt_p]`` forward. The unaligned token modes (§6: one tokenizer, one template) put the
  student's own sequence in place of the teacher's and ask for every masked position.

`run_teacher_passes` is the engine call: it gathers the passes of every rank of the teacher model-parallel
group, runs the teacher once and returns this rank's payload, CompDemo-merged (§4.4). A teacher placed on
ranks of its own (``teacher.placement=separate``) builds the passes of every student rank it serves itself and
runs them in one call, `serve_teacher_passes`; `payload_shape` is what the student then expects to receive.

The mask id written into the passes is resolved here too, once, at start-up (`checkpoint_mask_id`,
`teacher_mask_id`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.distributed as dist

from tide_megatron.align.compdemo import merge
from tide_megatron.align.rows import aligned_rows, masked_rows
from tide_megatron.data.batch import DistillBatch
from tide_megatron.distributed import payload_exchange as px
from tide_megatron.models.attention_mask import BlockDiffusionMask
from tide_megatron.models.wedlm import WEDLM_MASK_ID
from tide_megatron.teacher.engine import TeacherEngine

Payload = Literal["token_logprobs", "logit_rows"]


@dataclass
class TeacherPasses:
    """Every teacher pass of one micro-batch, as the inputs of one engine call (this rank's sequences only).

    ``inputs`` are ``[B, S]`` tensors that the teacher group gathers along the batch (right-padded with
    ``pad_values``). ``token_logprobs``: ids, targets (-1 = not needed) and key padding, one row per (pass,
    sequence). ``logit_rows``: ids, position ids, segment (-1 pad, 0 x0, p xt of pass p), original block and
    key validity per sequence, with ``rows`` ``[n, 2]`` (sequence, column) to read and ``vocab_limit`` ids kept.
    """

    payload: Payload
    inputs: dict[str, torch.Tensor]
    pad_values: dict[str, int | bool]
    num_passes: int
    length: int  # L_t of the micro-batch (token log-probs come back as [b, L_t])
    take_pass2: Optional[torch.Tensor] = None  # bool [b, L_t]: where pass 2's log-probs win (§4.4)
    rows: Optional[torch.Tensor] = None  # int64 [n, 2] for logit_rows
    vocab_limit: Optional[int] = None  # logit_rows: ids below this travel (the shared vocabulary, §9.1)


# ------------------------------------------------------------------------------------------------------
# Building the passes (pure)
# ------------------------------------------------------------------------------------------------------


def build_teacher_passes(batch: DistillBatch, mask_id: int, pad_id: int, block_size: int,
                         vocab_limit: Optional[int] = None, aligned: bool = True) -> TeacherPasses:
    """The teacher inputs of every pass of ``batch``: per-token log-probs for a chunk alignment, logit rows
    (cut to ``vocab_limit`` ids) at the distilled positions for a pair alignment; see the module docstring.

    ``aligned=False`` (the unaligned token modes ``kl`` / ``reverse_kl`` / ``taid``, §6): the teacher reads the
    student's own sequence and gives rows at every masked position (`unaligned_logit_row_passes`).
    """
    if batch.teacher_ids is None:
        raise ValueError("build_teacher_passes: the batch has no teacher inputs (a dataset without a teacher side)")
    if batch.teacher_chunk is not None:
        return _token_logprob_passes(batch, mask_id, pad_id)
    if batch.pair_student is None:
        raise ValueError("build_teacher_passes: the batch has neither a chunk nor a pair alignment")
    if vocab_limit is None:
        raise ValueError("build_teacher_passes: logit rows need vocab_limit (objective.shared_vocab)")
    if not aligned:
        return unaligned_logit_row_passes(batch, mask_id, pad_id, block_size, vocab_limit)
    return _logit_row_passes(batch, mask_id, pad_id, block_size, vocab_limit)


def payload_shape(batch: DistillBatch, vocab_limit: Optional[int]) -> tuple[int, int]:
    """The shape of the payload `run_teacher_passes` returns for ``batch``: ``[b, L_t]`` token log-probs for a
    chunk alignment, ``[n, vocab_limit]`` logit rows (one per distilled position) for a pair alignment."""
    if batch.teacher_chunk is not None:
        return tuple(batch.teacher_ids.shape)
    rows = aligned_rows(batch.masked, batch.pair_student, batch.pair_teacher, batch.pair_valid)
    return len(rows), int(vocab_limit)


def needed_teacher_tokens(batch: DistillBatch) -> torch.Tensor:
    """bool ``[P, b, L_t]``: the teacher tokens whose log-prob a chunk loss reads, i.e. the tokens of active
    chunks (§5.5-5.7), each in the pass whose log-prob wins there (§4). The engine returns 0 elsewhere."""
    chunk = batch.teacher_chunk
    if batch.active.shape[1]:
        needed = (chunk >= 0) & batch.active.gather(1, chunk.clamp_min(0))
    else:
        needed = torch.zeros_like(chunk, dtype=torch.bool)
    if batch.num_passes == 1:
        return needed[None]
    return torch.stack([needed & ~batch.take_pass2, needed & batch.take_pass2])


def _token_logprob_passes(batch: DistillBatch, mask_id: int, pad_id: int) -> TeacherPasses:
    passes = batch.teacher_pass_masks
    P, b, Lt = passes.shape
    ids = torch.where(passes, mask_id, batch.teacher_ids[None]).reshape(P * b, Lt)
    targets = torch.where(needed_teacher_tokens(batch), batch.teacher_ids[None], -1).reshape(P * b, Lt)
    att = batch.teacher_attention[None].expand(P, b, Lt).reshape(P * b, Lt)
    return TeacherPasses("token_logprobs", {"ids": ids, "targets": targets, "att": att},
                         {"ids": pad_id, "targets": -1, "att": False}, num_passes=P, length=Lt,
                         take_pass2=batch.take_pass2)


def _logit_row_passes(batch: DistillBatch, mask_id: int, pad_id: int, block_size: int,
                      vocab_limit: int) -> TeacherPasses:
    """Aligned token modes (§2.4): the teacher's own sequence, rows at the teacher partners of K."""
    rows = aligned_rows(batch.masked, batch.pair_student, batch.pair_teacher, batch.pair_valid)
    pass_of_row = None
    if batch.num_passes == 2:
        pass_of_row = batch.take_pass2[rows.batch, rows.teacher_pos].long()
    return _row_passes(batch.teacher_ids, batch.teacher_attention, batch.teacher_pass_masks, rows.batch,
                       rows.teacher_pos, pass_of_row, mask_id, pad_id, block_size, vocab_limit)


def unaligned_logit_row_passes(batch: DistillBatch, mask_id: int, pad_id: int, block_size: int,
                               vocab_limit: int) -> TeacherPasses:
    """Unaligned token modes (§6: "the same formulas on all masked positions, using unaligned [b, L] logits"):
    the teacher reads the student's own sequence (one tokenizer, one template), masked where the student is,
    or, with CompDemo (§4), M_B in pass 1 and M_A in pass 2; rows at every masked position, teacher position =
    student position. Like the student (§1.2), that sequence has no padding mask.

    Raises ValueError when the batch shows two templates (pairs that are not the identity) or two tokenizers
    (paired ids that differ): the student's sequence is then not the one the teacher reads.
    """
    check_one_template(batch)
    x0, masked = batch.x0, batch.masked
    rows = masked_rows(masked)
    passes, pass_of_row = masked[None], None
    if batch.num_passes == 2:
        if batch.student_pass2 is None:
            raise ValueError("unaligned CompDemo needs M_A in student positions (DistillBatch.student_pass2), "
                             "which the data stage writes for pair-aligned datasets")
        m_a = batch.student_pass2 & masked
        passes = torch.stack([masked & ~m_a, m_a])
        pass_of_row = m_a[rows.batch, rows.student_pos].long()
    att = torch.ones_like(masked)
    return _row_passes(x0, att, passes, rows.batch, rows.student_pos, pass_of_row, mask_id, pad_id, block_size,
                       vocab_limit)


def check_one_template(batch: DistillBatch) -> None:
    """The unaligned modes' premise (§6, "B, one template"): every pair is (i, i) with equal ids on both sides."""
    valid = batch.pair_valid
    moved = valid & (batch.pair_student != batch.pair_teacher)
    if bool(moved.any()):
        k, p = (int(i) for i in moved.nonzero()[0])
        raise ValueError(f"objective.mode: an unaligned token mode (kl, reverse_kl, taid; spec §6) compares teacher "
                         f"and student at the same position, but this dataset pairs student position "
                         f"{int(batch.pair_student[k, p])} with teacher position {int(batch.pair_teacher[k, p])} "
                         f"(two chat templates); re-run tide-preprocess with one template on both sides "
                         f"(--teacher-template = --student-template) or use the *_aligned mode")
    Lt = batch.teacher_ids.shape[1]
    inside = valid & (batch.pair_teacher < Lt)
    s_ids = batch.x0.gather(1, batch.pair_student.clamp(0, batch.x0.shape[1] - 1))
    t_ids = batch.teacher_ids.gather(1, batch.pair_teacher.clamp(0, Lt - 1))
    if bool((inside & (s_ids != t_ids)).any()):
        raise ValueError("objective.mode: an unaligned token mode (kl, reverse_kl, taid; spec §6) feeds the student's "
                         "ids to the teacher, but this dataset's paired ids differ (two tokenizers); use one "
                         "tokenizer on both sides or the *_aligned mode")


def _row_passes(ids: torch.Tensor, att: torch.Tensor, passes: torch.Tensor, row_seq: torch.Tensor,
                row_pos: torch.Tensor, pass_of_row: Optional[torch.Tensor], mask_id: int, pad_id: int,
                block_size: int, vocab_limit: int) -> TeacherPasses:
    """Logit-row passes over ``ids`` [b, L] (key validity ``att``, pass masks ``passes`` [P, b, L]): one
    compacted [x0 ; xt_1 ; xt_2] sequence per sample, rows (``row_seq``, ``row_pos``) read from pass
    ``pass_of_row`` (None: pass 1)."""
    length = ids.shape[1]
    extra = -length % block_size  # the x0-first block mask needs whole blocks of teacher positions (§2.2)
    if extra:
        ids = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
        att = torch.nn.functional.pad(att, (0, extra), value=False)
        passes = torch.nn.functional.pad(passes, (0, extra), value=False)
    P, b, Lt = passes.shape
    xts = torch.where(passes, mask_id, ids[None])
    if pass_of_row is None:
        pass_of_row = torch.zeros_like(row_seq)
    need = torch.zeros(P, b, Lt // block_size, dtype=torch.bool, device=ids.device)
    need[pass_of_row, row_seq, row_pos // block_size] = True
    c = compact_teacher_inputs(ids, xts, need, block_size, pad_id)
    key_valid = (c.segment >= 0) & att.gather(1, c.position_ids)
    requested = torch.stack([row_seq, c.index[pass_of_row, row_seq, row_pos]], dim=1)
    return TeacherPasses("logit_rows", {"ids": c.ids, "pos": c.position_ids, "seg": c.segment, "blk": c.block,
                                        "kv": key_valid},
                         {"ids": pad_id, "pos": 0, "seg": -1, "blk": -1, "kv": False}, num_passes=P,
                         length=length, rows=requested, vocab_limit=vocab_limit)


@dataclass
class CompactTeacher:
    ids: torch.Tensor  # int64 [b, S]: [x0 kept blocks ; xt_1 kept blocks ; ... ] per sequence, padded
    position_ids: torch.Tensor  # int64 [b, S]
    segment: torch.Tensor  # int64 [b, S]: -1 padding, 0 = x0, p = xt of pass p
    block: torch.Tensor  # int64 [b, S]: original block id
    index: torch.Tensor  # int64 [P, b, L]: compact column of xt position (pass p, seq, pos), -1 if dropped


def compact_teacher_inputs(x0: torch.Tensor, xts: torch.Tensor, need: torch.Tensor, block_size: int,
                           pad_id: int) -> CompactTeacher:
    """The x0-first teacher input of every pass in one sequence, keeping only the xt blocks in ``need``
    (bool ``[P, b, nblk]``: blocks holding a requested row) and the x0 blocks before the last of them."""
    P, b, L = xts.shape
    nblk = L // block_size
    dev = x0.device
    blk_idx = torch.arange(nblk, device=dev)
    offsets = torch.arange(block_size, device=dev)
    last = torch.where(need, blk_idx, -1).amax(-1).amax(0)  # [b]: last needed xt block over all passes
    keep_x0 = blk_idx[None, :] < last[:, None]
    lengths = (keep_x0.sum(-1) + need.sum(-1).sum(0)) * block_size
    S = max(1, int(lengths.max()))
    ids = torch.full((b, S), pad_id, dtype=x0.dtype, device=dev)
    pos = torch.zeros((b, S), dtype=torch.long, device=dev)
    seg = torch.full((b, S), -1, dtype=torch.long, device=dev)
    blk = torch.full((b, S), -1, dtype=torch.long, device=dev)
    index = torch.full((P, b, L), -1, dtype=torch.long, device=dev)
    for i in range(b):
        parts = [(0, x0[i], blk_idx[keep_x0[i]])] + [(p + 1, xts[p, i], blk_idx[need[p, i]]) for p in range(P)]
        col = 0
        for code, source, blocks in parts:
            positions = (blocks[:, None] * block_size + offsets).reshape(-1)
            n = positions.numel()
            ids[i, col:col + n] = source[positions]
            pos[i, col:col + n] = positions
            seg[i, col:col + n] = code
            blk[i, col:col + n] = positions // block_size
            if code > 0:
                index[code - 1, i, positions] = torch.arange(col, col + n, device=dev)
            col += n
    return CompactTeacher(ids=ids, position_ids=pos, segment=seg, block=blk, index=index)


# ------------------------------------------------------------------------------------------------------
# The engine call (collective over the teacher model-parallel group)
# ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def run_teacher_passes(engine: TeacherEngine, passes: TeacherPasses,
                       group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """This rank's payload for ``passes``: fp32 ``[b, L_t]`` log p(clean token), CompDemo-merged, or fp32 rows
    ``[n, vocab_limit]`` at the distilled positions, each from the pass where it was masked.

    Collective over ``group`` (every rank of the teacher model-parallel group calls it, each with its own
    micro-batch); the teacher runs once on the gathered passes of the whole group.
    """
    gathered, info = px.gather_teacher_inputs(passes.inputs, passes.pad_values, group)
    if passes.payload == "token_logprobs":
        logp = engine.token_logprobs(gathered["ids"], gathered["targets"], gathered["att"].long())
        return _merged_passes(px.own_sequences(logp, info), passes)
    all_rows, counts = px.gather_rows(passes.rows, info, group)
    mask = BlockDiffusionMask(gathered["seg"], gathered["blk"], gathered["kv"])
    shard = engine.logit_row_shards(gathered["ids"], all_rows, passes.vocab_limit, attention_mask=mask,
                                    position_ids=gathered["pos"])  # this TP rank's vocabulary slice, all rows
    mine = px.vocab_shards_to_own_rows(shard, counts, group, tp_rank=engine.tp_rank)  # my rows, full vocabulary
    return mine[:, :passes.vocab_limit]


@torch.no_grad()
def serve_teacher_passes(engine: TeacherEngine, served: list[TeacherPasses]) -> list[torch.Tensor]:
    """The payloads of several student ranks' passes from one engine call, in the order given: what
    `run_teacher_passes` returns on each of those ranks when they share a teacher group (the inputs are put
    together as its gathers would). Every rank of the teacher model-parallel group passes the same list."""
    inputs, infos = px.concat_teacher_inputs([p.inputs for p in served], served[0].pad_values)
    if served[0].payload == "token_logprobs":
        logp = engine.token_logprobs(inputs["ids"], inputs["targets"], inputs["att"].long())
        return [_merged_passes(px.own_sequences(logp, info), p) for p, info in zip(served, infos)]
    rows, counts = px.concat_rows([p.rows for p in served], infos)
    mask = BlockDiffusionMask(inputs["seg"], inputs["blk"], inputs["kv"])
    out = engine.logit_rows(inputs["ids"], rows, served[0].vocab_limit, attention_mask=mask,
                            position_ids=inputs["pos"])
    return list(out.split(counts))


def _merged_passes(logp: torch.Tensor, passes: TeacherPasses) -> torch.Tensor:
    """``[P*b, L]`` per-pass log-probs of one rank → ``[b, L_t]``, pass 2's winning where it masked (§4.4)."""
    mine = logp.reshape(passes.num_passes, -1, passes.length)
    return mine[0] if passes.num_passes == 1 else merge(mine[0], mine[1], passes.take_pass2)


# ------------------------------------------------------------------------------------------------------
# The teacher's mask id (spec §9.1): resolved once, here
# ------------------------------------------------------------------------------------------------------


def checkpoint_mask_id(configured: Optional[int], checkpoint_config: dict, arch: str) -> Optional[int]:
    """The teacher's own mask id: ``teacher.mask_id``, else its config.json ``mask_token_id``, else WeDLM's
    151665 when the vocabulary holds it (§2.1, §2.2); None when none of these names one."""
    mask = configured if configured is not None else checkpoint_config.get("mask_token_id")
    if mask is None and arch == "wedlm" and int(checkpoint_config.get("vocab_size") or 0) > WEDLM_MASK_ID:
        mask = WEDLM_MASK_ID  # WeDLM's own mask, not the shared tokenizer's (the student's 151669)
    return None if mask is None else int(mask)


def teacher_mask_id(own: Optional[int], dataset_teacher: dict, align: str, where: str) -> int:
    """The mask id written into every teacher pass: the teacher's own (`checkpoint_mask_id`), else the
    dataset's teacher tokenizer's.

    Pairs datasets are written with the shared (student's) tokenizer, whose mask is the student's, so the
    teacher's own id (e.g. WeDLM's 151665 against the student's 151669, §2.2) wins there. A chunks dataset has
    the teacher's own tokenizer: the two must agree, since a wrong mask id silently ruins every pass.
    """
    recorded = int(dataset_teacher["mask_id"])
    if own is None:
        return recorded
    if align == "chunks" and own != recorded:
        raise ValueError(f"teacher.mask_id: the teacher uses mask id {own} (teacher.mask_id or its config.json) "
                         f"but the dataset's teacher tokenizer has {recorded} ({where}); a wrong mask id silently "
                         f"ruins every teacher pass (spec §9.1)")
    return own
