"""Student-t quantiles and the incomplete beta function against published tables and mpmath."""

import math

import pytest

from tide_megatron.report.stats import (estimate, paired_difference, regularized_incomplete_beta, student_t_cdf,
                                        student_t_quantile)

# Two-sided 95% critical values t_{0.975, df} (any statistics table).
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 29: 2.0452, 120: 1.9799}


@pytest.mark.parametrize("df,expected", sorted(T_975.items()))
def test_t_quantile_matches_the_table(df, expected):
    assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=5e-5)
    assert student_t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-5)


def test_t_quantile_inverts_the_cdf_and_tends_to_the_normal():
    for df in (1, 3, 7, 50):
        for p in (0.6, 0.9, 0.995):
            assert student_t_cdf(student_t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)
    assert student_t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)  # the normal's 97.5% point
    assert student_t_cdf(0.0, 4) == 0.5


def test_incomplete_beta_matches_mpmath():
    mpmath = pytest.importorskip("mpmath")
    for a, b, x in ((0.5, 0.5, 0.3), (2.5, 0.5, 0.9), (50.0, 0.5, 0.99), (1.0, 0.5, 1e-3), (7.0, 3.0, 0.6)):
        ref = float(mpmath.betainc(a, b, 0, x, regularized=True))
        assert regularized_incomplete_beta(a, b, x) == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_estimate_by_hand():
    e = estimate([1.0, 2.0, 3.0])
    half = 4.302653 * 1.0 / math.sqrt(3)
    assert (e.n, e.mean, e.std) == (3, 2.0, 1.0)
    assert e.ci_low == pytest.approx(2.0 - half, abs=1e-6) and e.ci_high == pytest.approx(2.0 + half, abs=1e-6)
    assert e.excludes_zero is False
    one = estimate([5.0])
    assert one.std is None and one.ci_low is None and one.excludes_zero is None
    with pytest.raises(ValueError, match="non-finite"):
        estimate([1.0, math.nan])


def test_paired_difference_pairs_by_seed():
    d = paired_difference({1: 1.0, 2: 2.0, 4: 9.0}, {1: 0.5, 2: 1.0, 3: 7.0})
    assert d.seeds == [1, 2] and d.differences == {1: 0.5, 2: 1.0}
    assert d.only_variant == [4] and d.only_baseline == [3]
    assert d.estimate.mean == 0.75
    assert d.estimate.ci_high - d.estimate.mean == pytest.approx(12.706205 * math.sqrt(0.125) / math.sqrt(2), rel=1e-6)
