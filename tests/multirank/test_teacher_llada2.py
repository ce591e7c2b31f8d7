"""LLaDA2 teacher on megatron-core vs the independent plain-PyTorch reference, at TP=1, TP=2 (+SP),
EP=2, PP=2 and ETP=2 (with and without TP=2) on 2 gloo ranks (§2.1, §9 pitfalls 17, 21, 22); payloads against full-logit math."""

import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.reference.llada2_checkpoint import build_random_reference, write_tiny_llada2
from tide_megatron.distributed import ParallelLayout, build_model_grid, seed_model_parallel_rng
from tide_megatron.models.llada2 import load_llada2_teacher
from tide_megatron.teacher import TeacherEngine

TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """One tiny HF-layout checkpoint, written by rank 0 into a directory both ranks can read."""
    holder = [tempfile.mkdtemp(prefix="tide-llada2-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    path = Path(holder[0])
    if dist.get_rank() == 0:
        write_tiny_llada2(path, seed=0)
    dist.barrier()
    return path


@pytest.fixture(scope="module")
def batch():
    """Two sequences, the second padded (key padding only, pad outputs ignored)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 120, (2, 12), generator=gen)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    ids[1, 9:] = 126
    return ids, mask


@pytest.fixture(scope="module")
def reference_logits(batch):
    ids, mask = batch
    with torch.no_grad():
        return build_random_reference(0)(ids, attention_mask=mask).logits


def _engine(closing, checkpoint, layout, micro_batch_size=None):
    grid = closing(build_model_grid(layout, "teacher"))
    seed_model_parallel_rng(0, grid.tp_rank, grid.ep_rank, grid.etp_rank)
    model, cfg = load_llada2_teacher(checkpoint, grid.pgs, torch.float32)
    return TeacherEngine(model, grid.pgs, pad_token_id=cfg.pad_token_id, micro_batch_size=micro_batch_size)


LAYOUTS = {
    "tp1": (ParallelLayout(), None),
    "tp2_sp": (ParallelLayout(tp=2), None),
    "ep2": (ParallelLayout(ep=2), None),
    "pp2": (ParallelLayout(pp=2), 1),
    "etp2": (ParallelLayout(etp=2), None),  # expert tensor parallelism runs on gloo too
    "tp2_etp2": (ParallelLayout(tp=2, etp=2), None),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_logits_match_reference(closing, name, checkpoint, batch, reference_logits):
    layout, mbs = LAYOUTS[name]
    engine = _engine(closing, checkpoint, layout, mbs)
    ids, mask = batch
    b, L = ids.shape
    rows = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(L), indexing="ij"), -1).reshape(-1, 2)
    got = engine.logit_rows(ids, rows, engine.vocab_size, attention_mask=mask).view(b, L, -1)
    real = mask.bool()
    err = (got - reference_logits)[real].abs().max().item()
    assert err < TOL, f"{name}: max |megatron - reference| = {err}"


@pytest.mark.parametrize("name", ["tp1", "tp2_sp", "pp2"])
def test_token_logprobs_equal_full_logit_computation(closing, name, checkpoint, batch, reference_logits):
    layout, mbs = LAYOUTS[name]
    engine = _engine(closing, checkpoint, layout, mbs)
    ids, mask = batch
    targets = torch.randint(0, 128, ids.shape, generator=torch.Generator().manual_seed(2))
    targets[0, 3] = -100
    got = engine.token_logprobs(ids, targets, attention_mask=mask)
    full = reference_logits.float().log_softmax(-1).gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
    full[0, 3] = 0.0
    real = mask.bool()
    assert got.dtype == torch.float32 and got.shape == ids.shape
    assert (got - full)[real].abs().max().item() < TOL


@pytest.mark.parametrize("name", ["tp1", "tp2_sp", "pp2"])
def test_logit_rows_shared_vocab(closing, name, checkpoint, batch, reference_logits):
    layout, mbs = LAYOUTS[name]
    engine = _engine(closing, checkpoint, layout, mbs)
    ids, mask = batch
    rows = torch.tensor([[0, 0], [0, 7], [1, 2], [1, 8]])
    limit = 100  # a shared-vocabulary cut that falls inside TP rank 1's half
    rows_full = reference_logits[rows[:, 0], rows[:, 1]]
    got = engine.logit_rows(ids, rows, limit, attention_mask=mask)
    assert got.shape == (4, limit)
    assert (got - rows_full[:, :limit]).abs().max().item() < TOL


def test_tide_convert_llada2_ep2_then_verify_tp2_with_remote_code(checkpoint, tmp_path_factory):
    """hf-to-mcore at EP=2, then `verify` reshards to TP=2 and compares with the checkpoint's own
    modeling code loaded through trust_remote_code."""
    from tide_megatron.cli.convert import run

    holder = [str(tmp_path_factory.mktemp("mcore") / "llada2") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    run(["hf-to-mcore", "--arch", "llada2", "--hf-dir", str(checkpoint), "--mcore-dir", holder[0],
         "--ep", "2", "--dtype", "float32"])
    diffs = run(["verify", "--hf-dir", str(checkpoint), "--mcore-dir", holder[0], "--trust-remote-code"])
    assert diffs["bidirectional"] < TOL and diffs["key_padding"] < TOL


def test_odd_length_is_padded_for_sequence_parallel(closing, checkpoint, batch):
    """L=11 at TP=2 with sequence parallelism: the engine pads to 12 with unseen pad tokens and crops."""
    engine = _engine(closing, checkpoint, LAYOUTS["tp2_sp"][0])
    ids, mask = batch[0][:, :11], batch[1][:, :11]
    targets = torch.roll(ids, 1, 1)
    got = engine.token_logprobs(ids, targets, attention_mask=mask)
    with torch.no_grad():
        full = build_random_reference(0)(ids, attention_mask=mask).logits.log_softmax(-1)
    want = full.gather(-1, targets[..., None]).squeeze(-1)
    assert got.shape == (2, 11)
    assert (got - want)[mask.bool()].abs().max().item() < TOL
