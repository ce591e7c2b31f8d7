"""Teacher placement at four ranks (issue: beyond two ranks, item 3). A separate teacher pool of 2 ranks (TP2, or
EP2) serving a DP2 student sends every micro-batch the colocated run's payload bit for bit, and the losses equal the
colocated run's step for step; the pool resumes exactly and serves held-out evaluations; an offline cache gives
the online run's losses and is refused when it belongs to another run; nothing partly written is left behind."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tide_megatron.data.stage import TideCollator
from tide_megatron.teacher.cache import CacheError
from tide_megatron.training.teacher_cache import precompute_teacher_cache
from tide_megatron.training.teacher_server import TeacherServer, build_trainer
from tide_megatron.training.trainer import DistillTrainer
from tests.helpers import tiny_distill as td
from tests.helpers.multirank import shared_artifacts, shared_dir, tiny_config


@pytest.fixture(scope="module")
def artifacts():
    root = shared_artifacts("placement4")
    if dist.get_rank() == 0:
        for pipe in "AB":
            td.write_dataset(root / f"train_{pipe}", 32, pipe)
            td.write_dataset(root / f"valid_{pipe}", 8, pipe, seed=99)
    dist.barrier()
    return root


def _datasets(root: Path, pipe: str):
    from tide_megatron.data.indexed import TideAlignedDataset

    return TideAlignedDataset(root / f"train_{pipe}"), TideAlignedDataset(root / f"valid_{pipe}")


@pytest.fixture
def build(closing):
    """``build(cfg, train, valid)``: this rank's trainer (a TeacherServer on the pool), closed after the test."""

    def make(cfg, train, valid=None, **kw):
        return closing(build_trainer(cfg, train, valid_data=valid, **kw))

    return make


def _config(artifacts, variant, name, **sections):
    pipe = "A" if variant.startswith("a_") else "B"
    data = {"train": str(artifacts / f"train_{pipe}"), "valid": str(artifacts / f"valid_{pipe}"),
            **sections.pop("data", {})}
    logging = {"log_interval": 1, "tensorboard": False, **sections.pop("logging", {})}
    return tiny_config(artifacts, variant, shared_dir(name), data=data, logging=logging, **sections)


def _record_payloads(trainer) -> dict:
    """Every payload a student trainer receives, keyed by (stream, epoch, sample indices)."""
    seen = {}
    if not isinstance(trainer, DistillTrainer) or isinstance(trainer, TeacherServer):
        return seen
    original = trainer.teacher_payload

    def record(batch, stream="train"):
        payload = original(batch, stream)
        seen[(stream, batch.epoch, tuple(batch.index.tolist()))] = payload.clone()
        return payload

    trainer.teacher_payload = record
    return seen


def _everyone(records: dict) -> dict:
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    return {k: v for part in parts for k, v in part.items()}


def _history(trainer, key: str) -> list[float]:
    return [v for _, v in trainer.logger.history[key]]


SEPARATE = {"wedlm_tp2": ("b_tide_shared", {"tp": 2}), "llada2_ep2": ("a_tide_shared", {"ep": 2})}


@pytest.mark.parametrize("name", list(SEPARATE))
def test_separate_teacher_pool_gives_the_colocated_payloads_and_losses(build, artifacts, name):
    """Colocated: student DP4, the teacher beside it. Separate: the teacher on ranks 2-3, student DP2 with two
    micro-batches per step: the same micro-batches per step, each teacher forward on the same gathered batch."""
    variant, teacher = SEPARATE[name]
    train, valid = _datasets(artifacts, "A" if variant.startswith("a_") else "B")
    steps = {"train_steps": 3, "lr": 2e-3}
    colocated = build(_config(artifacts, variant, f"colo-{name}", teacher=teacher, optim=steps), train, valid)
    assert colocated.student_dp == 4
    seen_colocated = _record_payloads(colocated)
    colocated.run()
    colocated.close()

    cfg = _config(artifacts, variant, f"sep-{name}", teacher={**teacher, "placement": "separate", "ranks": 2},
                  optim={**steps, "grad_accum": 2})
    separate = build(cfg, train, valid)
    if dist.get_rank() >= 2:
        assert isinstance(separate, TeacherServer) and not hasattr(separate, "model")
        assert separate.teacher_grid.ranks == range(2, 4)
    else:
        assert type(separate) is DistillTrainer and separate.teacher is None and separate.student_dp == 2
        assert separate.student_grid.ranks == range(0, 2)
    seen_separate = _record_payloads(separate)
    separate.run()
    separate.close()

    want, got = _everyone(seen_colocated), _everyone(seen_separate)
    assert len(got) == 3 * 4 + 4 and set(got) == set(want)  # 3 steps x 4 micro-batches + the final evaluation
    for key, payload in got.items():
        assert torch.equal(payload, want[key]), key
    if dist.get_rank() == 0:
        for key in ("loss/total", "loss/ce", "eval/total"):
            a, b = _history(colocated, key), _history(separate, key)
            assert len(a) == len(b) == (1 if key.startswith("eval") else 3)
            assert a == pytest.approx(b, rel=1e-5, abs=1e-7), key  # DP4 vs DP2 x 2 sums in another order


def test_separate_pool_resumes_exactly_and_evaluates(build, artifacts):
    """4 steps straight == 2 steps, stop (the pool has served step 3 ahead: drained), resume, 2 more; held-out
    evaluations every 2 steps come through their own stream."""
    train, valid = _datasets(artifacts, "B")
    common = dict(teacher={"tp": 2, "placement": "separate", "ranks": 2},
                  optim={"train_steps": 4, "lr": 2e-3}, checkpoint={"save_interval": 2, "resume": "auto"},
                  logging={"eval_interval": 2, "eval_batches": 2})
    straight = build(_config(artifacts, "b_tide_cross", "sep-straight", **common), train, valid)
    straight.run()
    cfg = _config(artifacts, "b_tide_cross", "sep-resumed", **common)
    first = build(cfg, train, valid)
    first.run(stop_after=2)
    assert first.state.step == 2
    first.close()
    second = build(cfg, train, valid)
    assert second.state.step == 2 and second.state.consumed_micro_batches == 2
    second.run()
    if dist.get_rank() == 0:
        assert len(_history(straight, "loss/total")) == 4
        assert _history(first, "loss/total") + _history(second, "loss/total") == _history(straight, "loss/total")
        assert _history(first, "eval/total") + _history(second, "eval/total") == _history(straight, "eval/total")
        assert len(_history(straight, "eval/total")) == 3  # steps 2 and 4, and the end of the run


def test_a_pool_that_serves_on_demand_gives_the_same_losses(build, artifacts):
    """Serving each step only when it is due (lookahead 0: teacher and student in turn) changes no number."""
    train, valid = _datasets(artifacts, "A")
    sections = dict(teacher={"ep": 2, "placement": "separate", "ranks": 2}, optim={"train_steps": 2})
    runs = []
    for lookahead in (1, 0):
        trainer = build(_config(artifacts, "a_tide_cross", f"sep-ahead{lookahead}", **sections), train, None,
                        lookahead_steps=lookahead)
        trainer.run()
        trainer.close()
        runs.append(trainer)
    if dist.get_rank() == 0:
        assert _history(runs[0], "loss/total") == _history(runs[1], "loss/total")


# ------------------------------------------------------------------------------------------------------
# Offline payloads
# ------------------------------------------------------------------------------------------------------

OFFLINE = dict(teacher={"tp": 2, "ep": 2}, optim={"train_steps": 6, "lr": 2e-3}, logging={"eval_interval": 3})


@pytest.fixture(scope="module")
def offline_cache(artifacts):
    """Two epochs of training payloads and the held-out ones, written by the 4 ranks (teacher TP2xEP2)."""
    train, valid = _datasets(artifacts, "A")
    cfg = _config(artifacts, "a_tide_shared", "cache-writer", **OFFLINE)
    path = precompute_teacher_cache(cfg, train, valid, epochs=2)
    assert path == str(artifacts / "train_A.teacher-cache")
    return Path(path)


def test_offline_cache_gives_the_online_losses(build, artifacts, offline_cache):
    train, valid = _datasets(artifacts, "A")
    online = build(_config(artifacts, "a_tide_shared", "online", **OFFLINE), train, valid)
    online.run()
    online.close()
    offline = build(_config(artifacts, "a_tide_shared", "offline", **{**OFFLINE, "teacher": {
        **OFFLINE["teacher"], "placement": "offline"}}), train, valid)
    assert offline.teacher is None and offline.teacher_grid.layout.tp == 1  # no teacher built anywhere
    offline.run()
    if dist.get_rank() == 0:
        assert (offline_cache / "train" / "epoch_0001.bin").is_file()
        assert not (offline_cache / "train" / "epoch_0002.bin").exists()
        for key in ("loss/total", "loss/ce", "loss/alm_taid", "eval/total"):
            a, b = _history(online, key), _history(offline, key)
            assert len(a) == len(b) == (3 if key.startswith("eval") else 6), key
            assert a == pytest.approx(b, rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("change, field", [
    ({"optim": {"seed": 43}}, "optim.seed"),
    ({"objective": {"time_epsilon": 2e-3}}, "objective.time_epsilon"),
    ({"objective": {"compdemo": False}}, "objective.compdemo"),
    ({"student": {"block_size": 8}}, "student.block_size"),
])
def test_offline_run_refuses_a_cache_written_for_other_settings(build, artifacts, offline_cache, change, field):
    train, valid = _datasets(artifacts, "A")
    sections = {**OFFLINE, "teacher": {**OFFLINE["teacher"], "placement": "offline"}}
    for key, value in change.items():
        sections[key] = {**sections.get(key, {}), **value}
    with pytest.raises(CacheError, match=field.replace(".", r"\.")):
        build(_config(artifacts, "a_tide_shared", "offline-bad", **sections), train, valid)


def test_offline_run_refuses_a_cache_without_every_epoch_it_reads(build, artifacts, offline_cache):
    train, valid = _datasets(artifacts, "A")
    sections = {**OFFLINE, "teacher": {**OFFLINE["teacher"], "placement": "offline"}, "optim": {"train_steps": 9}}
    with pytest.raises(CacheError, match=r"reads 3 epochs of train .*epoch_0002\.bin is missing"):
        build(_config(artifacts, "a_tide_shared", "offline-epochs", **sections), train, valid)


def test_a_failed_cache_write_leaves_nothing_behind(artifacts, monkeypatch):
    """Every rank fails in the second epoch: no cache at the path, no staged directory beside it."""
    train, _ = _datasets(artifacts, "A")
    cfg = _config(artifacts, "a_tide_cross", "cache-fails", teacher={"tp": 2, "ep": 2, "cache": str(
        artifacts / "failed.teacher-cache")})
    original = TideCollator.set_epoch

    def fail_in_epoch_1(self, epoch):
        if epoch == 1:
            raise RuntimeError("interrupted")
        original(self, epoch)

    monkeypatch.setattr(TideCollator, "set_epoch", fail_in_epoch_1)
    with pytest.raises(RuntimeError, match="interrupted"):
        precompute_teacher_cache(cfg, train, None, epochs=2)
    dist.barrier()
    assert not (artifacts / "failed.teacher-cache").exists()
    assert not [p for p in artifacts.iterdir() if p.name.startswith(".failed.teacher-cache")]
