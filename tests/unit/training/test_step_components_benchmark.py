"""benchmarks/step_components.py times each component against the plain computation it replaces: both sides of
every pair must compute the same thing (else its figures measure nothing), and a pair that differs is refused."""

import pytest
import torch

from tests.helpers.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("step_components")


def _pairs(bench):
    gen = torch.Generator().manual_seed(1)
    return [bench.rms_norm(gen, 96), bench.token_logprob_rows(gen, 24), bench.teacher_head(gen),
            bench.embedding_grad(gen, 512, 16, 300), bench.wgrad_accumulation(gen, 40), bench.adamw(gen)]


def test_both_sides_of_every_pair_agree(bench):
    for c in _pairs(bench):
        want, got = c.plain(), c.ours()
        assert len(want) == len(got) > 0, c.name
        for w, o in zip(want, got):
            assert w.shape == o.shape and w.abs().max() > 0, c.name  # not a trivially zero comparison
            torch.testing.assert_close(o.float(), w.float(), atol=c.tolerance, rtol=1e-5, msg=lambda m: f"{c.name}: {m}")


def test_a_pair_that_differs_is_not_timed(bench):
    c = bench.rms_norm(torch.Generator().manual_seed(2), 32)
    wrong = bench.Component(c.name, c.shape, c.plain, lambda: tuple(t * 1.01 for t in c.ours()))
    with pytest.raises(SystemExit, match="rms_norm: ours and the plain computation differ"):
        bench.measure(wrong, repeats=3)
