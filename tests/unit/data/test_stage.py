"""Train-time stage: §1.2 collation, §1.3 noising, §5.5 / §2.4 teacher masks, CompDemo passes, determinism."""

import json

import pytest
import torch

from tide_megatron.align.rows import aligned_rows
from tide_megatron.data.batch import DistillBatch
from tide_megatron.data.indexed import TideAlignedDataset
from tide_megatron.data.preprocess import preprocess
from tide_megatron.data.samples import SampleConfig
from tide_megatron.data.stage import AlignmentStage, StageConfig, TideCollator, collate_samples
from tide_megatron.data.stdlib_snippets import stdlib_snippets
from tide_megatron.teacher.passes import build_teacher_passes

B = 32


def _dataset(tmp_path_factory, name, **cfg) -> TideAlignedDataset:
    out = tmp_path_factory.mktemp(name)
    src = out / "in.jsonl"
    src.write_text("\n".join(json.dumps({"messages": c["messages"]}) for c in stdlib_snippets(16, seed=9)))
    preprocess([src], out / "ds", SampleConfig(**cfg), progress=False)
    return TideAlignedDataset(out / "ds")


@pytest.fixture(scope="module")
def chunk_ds(tok, tmp_path_factory):
    return _dataset(tmp_path_factory, "chunks", student_tokenizer="qwen2", teacher_tokenizer="llama-spm",
                    student_template="qwen3", teacher_template="llada2", student_max_len=256, teacher_max_len=400)


@pytest.fixture(scope="module")
def pair_ds(tok, tmp_path_factory):
    return _dataset(tmp_path_factory, "pairs", student_tokenizer="qwen2", teacher_tokenizer="qwen2",
                    student_template="qwen3", teacher_template="wedlm", align="pairs", student_max_len=256,
                    teacher_max_len=300)


def test_student_collation_spec_1_2(chunk_ds):
    cfg = StageConfig.from_meta(chunk_ds.meta)
    # §1.1: with the qwen3 template, eos = <|im_end|> (151645) and pad = <|endoftext|> (151643)
    assert (cfg.student_eos_id, cfg.student_pad_id) == (151645, 151643)
    samples = [chunk_ds[i] for i in range(4)]
    batch = collate_samples(samples, cfg)
    assert batch["input_ids"].shape == (4, 256) and batch["labels"].shape == (4, 256)
    for k, s in enumerate(samples):
        n = len(s["student_ids"])
        filled = min(-(-n // B) * B, 256)
        assert batch["input_ids"][k, :n].tolist() == s["student_ids"].tolist()
        assert (batch["input_ids"][k, n:filled] == cfg.student_eos_id).all()
        assert (batch["labels"][k, n:filled] == cfg.student_eos_id).all()  # eos fill is trained
        assert (batch["input_ids"][k, filled:] == cfg.student_pad_id).all()
        assert (batch["labels"][k, filled:] == -100).all()  # padding starts on a block boundary
        nt = len(s["teacher_ids"])
        assert batch["teacher_attention_mask"][k].sum() == nt  # chunks mode: plain batch padding (§2.3)
        assert (batch["teacher_ids"][k, nt:] == cfg.teacher_pad_id).all()


def test_chunk_stage_masks(chunk_ds):
    cfg = StageConfig.from_meta(chunk_ds.meta)
    batch = TideCollator(cfg, seed=1)([chunk_ds[i] for i in range(6)])
    sc, tc = batch["student_chunk"], batch["teacher_chunk"]
    m, tm, sampled = batch["student_mask"], batch["teacher_mask"], batch["sampled_student_mask"]
    maskable = batch["labels"] != -100
    assert (sampled <= m).all() and not (m & ~maskable).any()  # expansion only adds maskable tokens
    assert not (tm & ~batch["teacher_attention_mask"]).any()
    for k in range(6):
        for c in range(int(batch["num_chunks"][k])):
            s_tok, t_tok = sc[k] == c, tc[k] == c
            hit = bool((sampled[k] & s_tok).any())
            assert bool(tm[k][t_tok].all()) == hit and bool(tm[k][t_tok].any()) == hit
            if hit:
                assert m[k][s_tok & maskable[k]].all()
            active = hit and bool(maskable[k][s_tok].all())
            assert bool(batch["active_chunks"][k, c]) == active
        assert not tm[k][tc[k] < 0].any()  # template/prompt tokens outside chunks stay clean
    teacher_mask_id = chunk_ds.meta["teacher"]["mask_id"]
    ids = build_teacher_passes(DistillBatch.from_stage(batch), teacher_mask_id, cfg.teacher_pad_id, B).inputs["ids"]
    assert not (batch["teacher_ids"] == teacher_mask_id).any()
    assert torch.equal(ids == teacher_mask_id, tm)
    assert (ids < chunk_ds.meta["teacher"]["vocab_size"]).all()  # no student id (mask) leaks into the teacher
    assert torch.equal(batch["student_noised_ids"] == cfg.student_mask_id, m)
    assert batch["active_chunks"].any() and (batch["t"] >= 1e-3).all() and (batch["t"] < 1).all()


def test_pair_stage_fills_teacher_to_blocks_and_projects(pair_ds):
    cfg = StageConfig.from_meta(pair_ds.meta)
    assert cfg.teacher_fill_to_block
    samples = [pair_ds[i] for i in range(5)]
    batch = TideCollator(cfg, seed=3)(samples)
    for k, s in enumerate(samples):
        nt = len(s["teacher_ids"])
        real = int(batch["teacher_attention_mask"][k].sum())
        assert real == -(-nt // B) * B and (batch["teacher_ids"][k, nt:real] == cfg.teacher_eos_id).all()
        n = len(s["pairs"])
        assert batch["pair_valid"][k, :n].all() and not batch["pair_valid"][k, n:].any()
        expect = torch.zeros_like(batch["teacher_mask"][k])
        for si, ti in s["pairs"].tolist():
            expect[ti] = batch["student_mask"][k, si]
        assert torch.equal(batch["teacher_mask"][k], expect)
        # The distilled positions K (§2.4): exactly the pairs whose student position is masked.
        rows = aligned_rows(batch["student_mask"], batch["pair_student"], batch["pair_teacher"], batch["pair_valid"])
        mine = rows.batch == k
        want = [(si, ti) for si, ti in s["pairs"].tolist() if batch["student_mask"][k, si]]
        assert list(zip(rows.student_pos[mine].tolist(), rows.teacher_pos[mine].tolist())) == want
    assert torch.equal(batch["student_mask"], batch["sampled_student_mask"])  # no chunk expansion in pairs mode


@pytest.mark.parametrize("which", ["chunk_ds", "pair_ds"])
def test_compdemo_passes_partition_the_teacher_mask(which, request):
    ds = request.getfixturevalue(which)
    cfg = StageConfig.from_meta(ds.meta, compdemo_ratio=0.5)
    batch = TideCollator(cfg, seed=4)([ds[i] for i in range(6)])
    masked1 = batch["demo_teacher_mask_b"]  # pass 1 masks B
    masked2 = batch["demo_teacher_mask_a"]  # pass 2 masks A
    assert not (masked1 & masked2).any() and torch.equal(masked1 | masked2, batch["teacher_mask"])
    assert masked1.any() and masked2.any()
    step = DistillBatch.from_stage(batch)
    assert torch.equal(step.take_pass2, masked2)  # merged logits take pass 2 exactly on A
    assert torch.equal(step.teacher_pass_masks, torch.stack([masked1, masked2]))
    if which == "chunk_ds":  # chunk-level split: a chunk's teacher tokens all land in the same pass
        tc = batch["teacher_chunk"]
        for k in range(tc.shape[0]):
            for c in tc[k][masked2[k]].unique().tolist():
                assert masked2[k][tc[k] == c].all()


def _batches(ds, cfg, seed, workers):
    """The stage in DataLoader workers, over a seeded shuffle (as training/data.py runs it)."""
    kw = {"prefetch_factor": 2} if workers else {}
    dl = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed),
                                     num_workers=workers, collate_fn=TideCollator(cfg, seed), **kw)
    return list(dl)


@pytest.mark.slow
def test_deterministic_across_worker_counts(chunk_ds):
    cfg = StageConfig.from_meta(chunk_ds.meta)
    ref = _batches(chunk_ds, cfg, seed=7, workers=0)
    par = _batches(chunk_ds, cfg, seed=7, workers=2)
    assert len(ref) == len(par) == 4
    for x, y in zip(ref, par):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key
    other = _batches(chunk_ds, cfg, seed=8, workers=0)
    assert not all(torch.equal(x["student_mask"], y["student_mask"]) for x, y in zip(ref, other))


def test_stage_on_an_external_mask(chunk_ds):
    cfg = StageConfig.from_meta(chunk_ds.meta)
    batch = collate_samples([chunk_ds[i] for i in range(3)], cfg)
    none = AlignmentStage(cfg)(batch, torch.zeros_like(batch["labels"], dtype=torch.bool))
    assert not none["teacher_mask"].any() and not none["active_chunks"].any()
    step = DistillBatch.from_stage({**batch, **none, "t": torch.full((3,), 0.5)})
    ids = build_teacher_passes(step, chunk_ds.meta["teacher"]["mask_id"], cfg.teacher_pad_id, B).inputs["ids"]
    assert torch.equal(ids, batch["teacher_ids"])
    full = AlignmentStage(cfg)(batch, batch["labels"] != -100)
    in_response = (batch["teacher_chunk"] >= 0) & full["teacher_mask"]
    assert in_response.any()


def test_stage_config_validation():
    with pytest.raises(ValueError, match="multiple of block_size"):
        StageConfig(1, 2, 3, 4, 5, student_len=100)
    with pytest.raises(ValueError, match="align"):
        StageConfig(1, 2, 3, 4, 5, align="dense")
