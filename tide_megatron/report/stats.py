"""Means, standard deviations and Student-t confidence intervals over seeds; paired differences.

The interval of a mean over n seeds is ``mean ± t_{(1+c)/2, n-1} · s / √n`` with the sample standard
deviation ``s`` (n - 1 in the denominator): the two-sided Student-t interval, which assumes the per-seed
values are independent draws from a normal distribution. A paired difference takes, for every seed that
both variants ran, ``variant - baseline`` and applies the same interval to those differences (the seeds
fix init, data order and noise, so pairing removes their shared part of the variance).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

INTERVAL_NAME = "two-sided Student-t interval of the mean over seeds"


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), converged to 1e-15."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"regularized_incomplete_beta: x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"student_t_cdf: df must be > 0, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on the CDF to 1e-12; p in (0, 1))."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"student_t_quantile: p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass
class Estimate:
    """Mean, sample standard deviation and confidence interval of n values (interval None when n < 2)."""

    n: int
    mean: float
    std: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    confidence: float

    @property
    def excludes_zero(self) -> Optional[bool]:
        """Whether the interval lies wholly on one side of 0 (None without an interval)."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low > 0.0 or self.ci_high < 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """The Student-t estimate of the mean of ``values`` (at least one finite value)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("estimate: no values")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ValueError(f"estimate: non-finite values {bad}")
    n = len(vals)
    mean = math.fsum(vals) / n
    if n < 2:
        return Estimate(n, mean, None, None, None, confidence)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Estimate(n, mean, std, mean - half, mean + half, confidence)


@dataclass
class PairedDifference:
    """``variant - baseline`` over the seeds both ran, and the seeds only one of them has."""

    estimate: Optional[Estimate]
    seeds: list[int]
    differences: dict[int, float]
    only_variant: list[int]
    only_baseline: list[int]


def paired_difference(variant: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = 0.95) -> PairedDifference:
    """Per-seed differences ``variant[s] - baseline[s]`` and their Student-t estimate (None with no pair)."""
    seeds = sorted(set(variant) & set(baseline))
    diffs = {s: float(variant[s]) - float(baseline[s]) for s in seeds}
    est = estimate(list(diffs.values()), confidence) if diffs else None
    return PairedDifference(est, seeds, diffs, sorted(set(variant) - set(baseline)),
                            sorted(set(baseline) - set(variant)))
