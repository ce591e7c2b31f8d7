"""From run records to the report: per variant x metric estimates over seeds, paired differences against a
baseline, and every run or seed that could not be used, said so."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from tide_megatron.report.run_dir import RunRecord
from tide_megatron.report.stats import INTERVAL_NAME, Estimate, PairedDifference, estimate, paired_difference

#: Substrings of metric names for which a smaller value is better (losses, bits, perplexities).
_LOWER_IS_BETTER = ("heldout/", "train/", "bpb", "bits_per_byte", "perplexity", "loss")


def lower_is_better(metric: str) -> Optional[bool]:
    """True for losses / bits / perplexities, False for other lm-eval scores (accuracies), None if unknown."""
    if any(s in metric for s in _LOWER_IS_BETTER):
        return True
    if metric.startswith("lm_eval/"):
        return False
    return None


@dataclass
class Cell:
    """One variant x metric: the per-seed values and their estimate."""

    values: dict[int, float]
    estimate: Estimate


@dataclass
class Comparison:
    """One variant against the baseline on one metric."""

    variant: str
    metric: str
    paired: PairedDifference
    statement: str


@dataclass
class Report:
    confidence: float
    variants: list[str]
    metrics: list[str]
    cells: dict[str, dict[str, Cell]]
    runs: list[RunRecord]
    excluded: list[RunRecord]
    baseline: Optional[str] = None
    comparisons: list[Comparison] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    curve_key: str = "loss/ce"
    config_changes: dict[str, dict[str, tuple]] = field(default_factory=dict)

    @property
    def interval(self) -> str:
        return f"{self.confidence:.0%} {INTERVAL_NAME}"

    def comparison(self, variant: str, metric: str) -> Optional[Comparison]:
        return next((c for c in self.comparisons if c.variant == variant and c.metric == metric), None)


def _fmt(x: float) -> str:
    return f"{x:+.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:+.3e}"


def paired_statement(variant: str, baseline: str, metric: str, paired: PairedDifference, confidence: float) -> str:
    """The plain-words result of one paired comparison, following its interval."""
    est = paired.estimate
    if est is None:
        return f"{metric}: no seed has complete runs of both {variant} and {baseline}: no comparison"
    head = f"{metric}: {variant} - {baseline} = {_fmt(est.mean)} over {est.n} paired seed{'s' * (est.n != 1)}"
    if est.ci_low is None:
        return f"{head}; one pair gives no interval (at least 2 seeds are needed): no conclusion"
    head += f", {confidence:.0%} CI [{_fmt(est.ci_low)}, {_fmt(est.ci_high)}]"
    if not est.excludes_zero:
        return f"{head}: the interval contains 0: no significant difference at this scale"
    lower = est.mean < 0
    direction = f"{variant} is {'lower' if lower else 'higher'} than {baseline}"
    better = lower_is_better(metric)
    if better is not None:
        direction += f" ({'better' if lower == better else 'worse'})"
    return f"{head}: the interval excludes 0: {direction}"


def build_report(runs: Sequence[RunRecord], baseline: Optional[str] = None, metrics: Optional[Sequence[str]] = None,
                 confidence: float = 0.95, curve_key: str = "loss/ce") -> Report:
    """Aggregate complete runs per variant; pair each variant's seeds with the baseline's.

    Runs that are not complete are kept aside (``excluded``) and never averaged; a seed that the baseline
    has but a variant lacks (or the other way round) is flagged, as is a metric missing from some runs.
    """
    if not runs:
        raise ValueError("tide-report: no runs")
    variants = list(dict.fromkeys(r.variant for r in runs))
    complete = [r for r in runs if r.complete and r.seed is not None]
    excluded = [r for r in runs if r not in complete]
    if baseline is not None and baseline not in variants:
        raise ValueError(f"--baseline {baseline!r}: no such variant (found: {', '.join(variants)})")
    found = sorted({m for r in complete for m in r.metrics})
    flags: list[str] = []
    if metrics:
        unknown = [m for m in metrics if m not in found]
        if unknown:
            raise ValueError(f"--metrics: {', '.join(unknown)} not in any complete run (found: "
                             f"{', '.join(found) or 'none'})")
        chosen = list(metrics)
    else:
        chosen = _default_metrics(complete, flags)
    for r in runs:
        flags += [f"{r.describe()}: {note}" for note in r.notes]
        if not r.complete:
            continue
        if r.seed is None:
            flags.append(f"{r.path}: no seed (neither a seed<N> directory nor optim.seed in its results)")
    cells: dict[str, dict[str, Cell]] = {}
    for v in variants:
        mine = [r for r in complete if r.variant == v]
        cells[v] = {}
        for m in chosen:
            values = {r.seed: r.metrics[m] for r in mine if m in r.metrics}
            missing = sorted(r.seed for r in mine if m not in r.metrics)
            if missing:
                flags.append(f"{v}: metric {m} missing from seed{'s' * (len(missing) > 1)} "
                             f"{', '.join(map(str, missing))}")
            if values:
                cells[v][m] = Cell(values, estimate(list(values.values()), confidence))
    report = Report(confidence, variants, chosen, cells, list(runs), excluded, baseline, flags=flags,
                    curve_key=curve_key, config_changes=config_changes(complete or runs, baseline or variants[0]))
    if baseline is not None:
        _compare(report, complete)
    return report


#: Config fields that name a run rather than shape it (they differ between any two runs).
_RUN_FIELDS = ("name", "output_dir", "optim.seed", "checkpoint.dir", "checkpoint.resume", "logging.dir")


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        elif name not in _RUN_FIELDS:
            out[name] = value
    return out


def config_changes(runs: Sequence[RunRecord], reference: str) -> dict[str, dict[str, tuple]]:
    """Per variant, the config fields whose value differs from the reference variant's: ``{field: (value, ref)}``."""
    first = {}
    for r in runs:
        if r.config and r.variant not in first:
            first[r.variant] = _flat(r.config)
    ref = first.get(reference, {})
    out = {}
    for v, flat in first.items():
        if v == reference:
            continue
        keys = sorted(set(flat) | set(ref))
        out[v] = {k: (flat.get(k), ref.get(k)) for k in keys if flat.get(k) != ref.get(k)}
    return out


def _default_metrics(complete: Sequence[RunRecord], flags: list[str]) -> list[str]:
    """The held-out and lm-eval metrics every variant has (else every shared one); totals only within one objective.

    ``*/total`` is CE plus the mode's own distillation term, so it compares nothing across modes.
    """
    per_variant: dict[str, set] = {}
    for r in complete:
        per_variant.setdefault(r.variant, set()).update(r.metrics)
    shared = set.intersection(*per_variant.values()) if per_variant else set()
    chosen = sorted(m for m in shared if m.startswith(("heldout/", "lm_eval/"))) or sorted(shared)
    modes = sorted({str(r.config.get("objective", {}).get("mode")) for r in complete})
    if len(modes) > 1:
        totals = [m for m in chosen if m.endswith("/total")]
        if totals:
            chosen = [m for m in chosen if m not in totals]
            flags.append(f"{', '.join(totals)} left out: the variants train different objectives "
                         f"({', '.join(modes)}), whose totals do not compare (name it in --metrics to see it)")
    return chosen


def _compare(report: Report, complete: Sequence[RunRecord]) -> None:
    base = report.baseline
    by_key = {(r.variant, r.seed): r for r in complete}
    base_seeds = sorted(r.seed for r in complete if r.variant == base)
    every = {(r.variant, r.seed): r for r in report.runs}
    for v in report.variants:
        if v == base:
            continue
        seeds = sorted(r.seed for r in complete if r.variant == v)
        for s in sorted(set(base_seeds) - set(seeds)):
            other = every.get((v, s))
            why = f"its run is {other.status}" if other else "there is no run"
            report.flags.append(f"missing seed: {base} has seed {s} but {v} does not ({why}); seed {s} is left out "
                                f"of the paired difference")
        for s in sorted(set(seeds) - set(base_seeds)):
            other = every.get((base, s))
            why = f"its run is {other.status}" if other else "there is no run"
            report.flags.append(f"missing seed: {v} has seed {s} but the baseline {base} does not ({why}); seed {s} "
                                f"is left out of the paired difference")
        for s in sorted(set(seeds) & set(base_seeds)):
            a, b = by_key[(v, s)].config, by_key[(base, s)].config
            for section, name in (("data", "train"), ("data", "micro_batch_size")):
                va, vb = a.get(section, {}).get(name), b.get(section, {}).get(name)
                if va != vb:
                    report.flags.append(f"seed {s}: {v} and {base} differ in {section}.{name} ({va!r} vs {vb!r}); "
                                        f"the pair does not share its data order")
        for m in report.metrics:
            va = report.cells[v].get(m)
            vb = report.cells[base].get(m)
            paired = paired_difference(va.values if va else {}, vb.values if vb else {}, report.confidence)
            report.comparisons.append(Comparison(v, m, paired, paired_statement(v, base, m, paired,
                                                                                report.confidence)))
