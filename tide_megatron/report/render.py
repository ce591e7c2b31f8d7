"""The report as markdown, as JSON, and as two PNGs: loss curves with a seed band, metrics with error bars."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from matplotlib.figure import Figure  # the object API: no pyplot state, no window, PNG through Agg

from tide_megatron.atomic import staged_path, write_text_atomic
from tide_megatron.eval.report import write_json_atomic
from tide_megatron.report.build import Report
from tide_megatron.report.run_dir import RunRecord

MARKDOWN, JSON, CURVES, BARS = "report.md", "report.json", "loss_curves.png", "metrics.png"


def _num(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3e}"


def _ci(lo: Optional[float], hi: Optional[float]) -> str:
    return "-" if lo is None else f"[{_num(lo)}, {_num(hi)}]"


def to_markdown(report: Report) -> str:
    """Tables of estimates and paired differences, the runs left out, and the flags."""
    lines = ["# Ablation report", "",
             f"Intervals: {report.interval} (mean ± t·s/√n, s the sample standard deviation, n the seeds). "
             f"Only complete runs are averaged.", ""]
    ref = report.baseline or report.variants[0]
    if report.config_changes:
        lines += [f"## What each variant changes (config against {ref})", ""]
        for v, changes in report.config_changes.items():
            text = "; ".join(f"`{k}` = {a!r} (vs {b!r})" for k, (a, b) in changes.items()) or "nothing"
            lines.append(f"- {v}: {text}")
        lines.append("")
    lines += ["## Metrics per variant", "", "| metric | variant | n | seeds | mean | std | "
              f"{report.confidence:.0%} CI |", "|---|---|---|---|---|---|---|"]
    for m in report.metrics:
        for v in report.variants:
            cell = report.cells[v].get(m)
            if cell is None:
                lines.append(f"| {m} | {v} | 0 | - | - | - | - |")
                continue
            e = cell.estimate
            seeds = ", ".join(map(str, sorted(cell.values)))
            lines.append(f"| {m} | {v} | {e.n} | {seeds} | {_num(e.mean)} | {_num(e.std)} | "
                         f"{_ci(e.ci_low, e.ci_high)} |")
    if report.baseline is not None:
        lines += ["", f"## Paired differences against {report.baseline} (same seeds)", "",
                  f"| metric | variant - {report.baseline} | pairs | mean | std | {report.confidence:.0%} CI | "
                  "excludes 0 |", "|---|---|---|---|---|---|---|"]
        for c in report.comparisons:
            e = c.paired.estimate
            if e is None:
                lines.append(f"| {c.metric} | {c.variant} | 0 | - | - | - | - |")
                continue
            ex = {True: "yes", False: "no", None: "-"}[e.excludes_zero]
            lines.append(f"| {c.metric} | {c.variant} | {e.n} | {_num(e.mean)} | {_num(e.std)} | "
                         f"{_ci(e.ci_low, e.ci_high)} | {ex} |")
        lines += [""] + [f"- {c.statement}" for c in report.comparisons]
    lines += ["", "## Runs not averaged", ""]
    if report.excluded:
        lines += ["| variant | seed | status | why | directory |", "|---|---|---|---|---|"]
        lines += [f"| {r.variant} | {r.seed} | {r.status} | {r.reason} | {r.path} |" for r in report.excluded]
    else:
        lines.append("None: every run is complete.")
    lines += ["", "## Flags", ""]
    lines += [f"- {f}" for f in report.flags] if report.flags else ["None."]
    lines += ["", f"Plots: `{CURVES}` ({report.curve_key} per variant: one line per seed, the mean, and a band of "
              f"± one standard deviation over seeds), `{BARS}` (means with {report.confidence:.0%} CI error bars, "
              f"seeds as dots)."]
    return "\n".join(lines) + "\n"


def to_dict(report: Report) -> dict:
    """Everything in the markdown, machine-readable."""
    return {
        "interval": report.interval, "confidence": report.confidence, "baseline": report.baseline,
        "variants": report.variants, "metrics": report.metrics,
        "table": {v: {m: {"values": {str(s): x for s, x in c.values.items()}, **c.estimate.to_dict()}
                      for m, c in report.cells[v].items()} for v in report.variants},
        "paired": [{"variant": c.variant, "metric": c.metric, "seeds": c.paired.seeds,
                    "differences": {str(s): d for s, d in c.paired.differences.items()},
                    "only_variant": c.paired.only_variant, "only_baseline": c.paired.only_baseline,
                    "estimate": None if c.paired.estimate is None else c.paired.estimate.to_dict(),
                    "statement": c.statement} for c in report.comparisons],
        "runs": [_run_dict(r) for r in report.runs],
        "excluded": [_run_dict(r) for r in report.excluded],
        "flags": report.flags,
        "config_changes": {v: {k: {"value": a, "reference": b} for k, (a, b) in c.items()}
                           for v, c in report.config_changes.items()},
    }


def _run_dict(r: RunRecord) -> dict:
    return {"path": str(r.path), "variant": r.variant, "seed": r.seed, "status": r.status, "reason": r.reason,
            "step": r.step, "total_steps": r.total_steps}


def _savefig(fig, path: Path) -> None:
    with staged_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def plot_loss_curves(report: Report, path: Path) -> None:
    """One panel per variant: each complete seed's curve of ``report.curve_key``, their mean and ± 1 std band."""
    variants = report.variants
    fig = Figure(figsize=(4.2 * len(variants), 3.6))
    axes = fig.subplots(1, len(variants), sharey=True, squeeze=False)
    for ax, v in zip(axes[0], variants):
        runs = [r for r in report.runs if r.variant == v and r.complete and r.history.get(report.curve_key)]
        curves = {r.seed: dict((int(s), float(x)) for s, x in r.history[report.curve_key]) for r in runs}
        for seed, curve in sorted(curves.items()):
            steps = sorted(curve)
            ax.plot(steps, [curve[s] for s in steps], linewidth=0.8, alpha=0.45, label=f"seed {seed}")
        common = sorted(set.intersection(*(set(c) for c in curves.values()))) if curves else []
        if common:
            rows = [[c[s] for c in curves.values()] for s in common]
            mean = [sum(r) / len(r) for r in rows]
            std = [math.sqrt(sum((x - m) ** 2 for x in r) / (len(r) - 1)) if len(r) > 1 else 0.0
                   for r, m in zip(rows, mean)]
            ax.plot(common, mean, color="black", linewidth=1.6, label=f"mean of {len(curves)}")
            ax.fill_between(common, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color="gray", alpha=0.3, label="± 1 std")
        else:
            ax.text(0.5, 0.5, "no complete run", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(v)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(report.curve_key)
    fig.tight_layout()
    _savefig(fig, path)


def plot_metric_bars(report: Report, path: Path) -> None:
    """One panel per metric: a bar per variant at its mean, the CI as error bar, each seed as a dot."""
    metrics = report.metrics or ["(no metric)"]
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, m in enumerate(metrics):
        ax = axes[i // cols][i % cols]
        xs, means, lo_err, hi_err = [], [], [], []
        for j, v in enumerate(report.variants):
            cell = report.cells.get(v, {}).get(m)
            if cell is None:
                continue
            e = cell.estimate
            xs.append(j)
            means.append(e.mean)
            lo_err.append(0.0 if e.ci_low is None else e.mean - e.ci_low)
            hi_err.append(0.0 if e.ci_high is None else e.ci_high - e.mean)
            ax.scatter([j] * len(cell.values), list(cell.values.values()), color="black", s=10, zorder=3)
        ax.bar(xs, means, yerr=[lo_err, hi_err], capsize=4, color="tab:blue", alpha=0.6)
        shown = [x for v in report.variants for x in getattr(report.cells[v].get(m), "values", {}).values()]
        shown += [mu - e for mu, e in zip(means, lo_err)] + [mu + e for mu, e in zip(means, hi_err)]
        if shown:  # bars start at the axis floor, so differences between variants stay visible
            lo, hi = min(shown), max(shown)
            pad = 0.15 * (hi - lo) or 0.05 * abs(hi) or 1.0
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(range(len(report.variants)))
        ax.set_xticklabels(report.variants, rotation=20, ha="right", fontsize=8)
        ax.set_title(m, fontsize=9)
    for k in range(len(metrics), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"means with {report.interval}", fontsize=9)
    fig.tight_layout()
    _savefig(fig, path)


def write_report(report: Report, out_dir: str) -> dict[str, Path]:
    """Write report.md, report.json, loss_curves.png and metrics.png into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / MARKDOWN, "json": out / JSON, "curves": out / CURVES, "bars": out / BARS}
    write_text_atomic(paths["markdown"], to_markdown(report))
    write_json_atomic(str(paths["json"]), to_dict(report))
    plot_loss_curves(report, paths["curves"])
    plot_metric_bars(report, paths["bars"])
    return paths
