"""Issue 28's diagnosis of the faithful recipe (``tools/paper_diagnosis.py report``): for the
runs of ``tools/ablate.py --grid letters_paper_diagnosis`` (α-CE α .75, one change each), per
change and seed, whether the loss stayed finite (or the iteration of the NaN), the final loss,
the class conv's gradient norm over the first iterations; whether the width-preserving init at
64 channels gives the class-conv gradient and loss curve of 256 channels; and, from the
per-tensor gradient norms of every diverged run, which tensor group grows first.

Rules, fixed before the runs:

- *Groups*: backbone (``backbone.bottom_up.*``), FPN (the rest of ``backbone.*``), class tower
  (``head.cls_subnet.*``), class conv (``head.cls_score.*``), box branch (``head.bbox_subnet.*``,
  ``head.bbox_pred.*``). A group's norm at an iteration is the norm of all its gradients
  together (the root of the sum of its tensors' squared norms).
- *Growth*: a group's baseline is the median of its norm over the first ``BASELINE_ITERS`` (10)
  logged iterations; it *grows* at the first iteration where its norm is at least
  ``GROWTH_FACTOR`` (10) times its baseline, or not finite. The group that *grows first* is the
  one with the earliest such iteration; among groups growing at the same iteration, the one
  with the largest norm / baseline ratio there. The iteration of 100x is reported beside it.
- *Same as 256* (the width-preserving init's test, issue 28): for a seed, the median
  class-conv weight gradient over iterations ``[0, window)`` of the width-preserving run is
  within ``WIDTH_TOLERANCE`` (20%) of the 256-channel run's, and so is its ``loss_cls`` at every
  iteration both logged below ``window`` (mean relative difference reported, worst one
  tested). A run that turned NaN before ``window`` fails it unless both did.
"""
import json
import math
import os
import statistics
from typing import Dict, List, Optional, Sequence

from ..engine.grad_stats import FILENAME
from ..utils.metrics import read_json_lines
from .divergence import loss_curve

GROUPS = ("backbone", "FPN", "class tower", "class conv", "box branch")
BASELINE_ITERS = 10
GROWTH_FACTOR = 10.0
WIDTH_TOLERANCE = 0.2
CLASS_CONV = "head.cls_score.weight"
WINDOW = 300  # "the first few hundred iterations"
# The grid's names (analysis/grids.py DIAGNOSIS_CHANGES): the two runs the width test compares.
BASE, WIDTH_256, WIDTH_PRESERVING = "ce_a0.75_base", "ce_a0.75_width256", "ce_a0.75_init_wp"


def tensor_group(name: str) -> Optional[str]:
    """The group of a parameter name (see the module docstring); None for anything else."""
    if name.startswith("backbone.bottom_up."):
        return "backbone"
    if name.startswith("backbone."):
        return "FPN"
    if name.startswith("head.cls_subnet."):
        return "class tower"
    if name.startswith("head.cls_score."):
        return "class conv"
    if name.startswith(("head.bbox_subnet.", "head.bbox_pred.")):
        return "box branch"
    return None


def read_grad_rows(run_dir: str) -> List[dict]:
    """``grad_stats.jsonl`` of a run, one row per iteration in order (a resumed run's repeated
    iterations: the last row); [] if the run logged none."""
    rows = {int(r["iteration"]): r for r in read_json_lines(os.path.join(run_dir, FILENAME))}
    return [rows[i] for i in sorted(rows)]


def _norm(values: Sequence[float]) -> float:
    if any(not math.isfinite(v) for v in values):
        return math.inf
    return math.sqrt(sum(v * v for v in values))


def group_norms(rows: List[dict]) -> Dict[str, List[List[float]]]:
    """Per group, [[iteration, norm of the group's gradients], ...] (inf where one is not
    finite); groups with no logged tensor are left out."""
    out: Dict[str, List[List[float]]] = {}
    for row in rows:
        by_group: Dict[str, List[float]] = {}
        for name, value in row["norms"].items():
            group = tensor_group(name)
            if group is not None:
                by_group.setdefault(group, []).append(float(value))
        for group, values in by_group.items():
            out.setdefault(group, []).append([int(row["iteration"]), _norm(values)])
    return {g: out[g] for g in GROUPS if g in out}


def growth(curve: List[List[float]], factor: float = GROWTH_FACTOR,
           baseline_iters: int = BASELINE_ITERS) -> dict:
    """Baseline, first iterations at ``factor`` and 100x the baseline (or not finite), and the
    largest finite ratio, of one group's curve."""
    base_values = [v for _, v in curve[:baseline_iters] if math.isfinite(v)]
    baseline = statistics.median(base_values) if base_values else math.nan
    out = {"baseline": baseline, "grows_at": None, "ratio_there": None, "at_100x": None,
           "max_ratio": math.nan}
    if not base_values or baseline <= 0:
        return out
    ratios = [(int(it), v / baseline) for it, v in curve]
    finite = [r for _, r in ratios if math.isfinite(r)]
    out["max_ratio"] = max(finite) if finite else math.nan
    for it, r in ratios:
        if out["grows_at"] is None and (not math.isfinite(r) or r >= factor):
            out["grows_at"], out["ratio_there"] = it, r
        if not math.isfinite(r) or r >= 100.0:
            out["at_100x"] = it
            break
    return out


def growth_order(rows: List[dict]) -> List[dict]:
    """Every group's :func:`growth`, the one that grows first first (see the module
    docstring); groups that never grow last, in ``GROUPS`` order."""
    groups = [{"group": g, **growth(curve)} for g, curve in group_norms(rows).items()]

    def key(g):
        if g["grows_at"] is None:
            return (math.inf, 0.0)
        return (g["grows_at"], -g["ratio_there"] if math.isfinite(g["ratio_there"]) else -math.inf)

    return sorted(groups, key=key)


def _stats(values: List[float]) -> dict:
    finite = [v for v in values if math.isfinite(v)]
    return {"first": values[0] if values else math.nan,
            "median": statistics.median(finite) if finite else math.nan,
            "max": max(finite) if finite else math.nan, "n": len(values)}


def run_summary(run_dir: str, window: int = WINDOW) -> Optional[dict]:
    """One diagnosis run (``OUTPUT/<entry>/seed<S>``) from its ``result.json`` (written by
    ``tools/ablate.py``), ``metrics.json`` and ``grad_stats.jsonl``; None if it has not
    finished."""
    path = os.path.join(run_dir, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    curve = loss_curve(run_dir)
    finite = [(int(i), v) for i, v in curve if math.isfinite(v)]
    rows = read_grad_rows(run_dir)
    cls = [float(r["norms"].get(CLASS_CONV, math.nan)) for r in rows if r["iteration"] < window]
    bad = [r["iteration"] for r in rows
           if not all(math.isfinite(float(v)) for v in r["norms"].values())]
    return {
        "name": result["name"], "seed": result["seed"], "status": result["status"],
        "diverged_at": result.get("diverged_at"), "AP": result.get("AP"),
        "explosion": result.get("explosion"),
        "final_loss_cls": finite[-1][1] if finite else math.nan,
        "final_loss_iteration": finite[-1][0] if finite else None,
        "loss_curve": curve, "grad_iterations": len(rows),
        "first_nonfinite_grad": bad[0] if bad else None,
        "class_conv_grad": _stats(cls), "window": window,
        "class_conv_curve": [[r["iteration"], float(r["norms"].get(CLASS_CONV, math.nan))]
                             for r in rows],
        "growth": growth_order(rows) if result["status"] != "ok" or bad else None,
    }


def width_check(wp: Optional[dict], wide: Optional[dict], window: int = WINDOW,
                tolerance: float = WIDTH_TOLERANCE) -> Optional[dict]:
    """The width-preserving run ``wp`` against the 256-channel run ``wide`` (one seed) by the
    rule of the module docstring; None if either has not run."""
    if wp is None or wide is None:
        return None
    g_wp, g_wide = wp["class_conv_grad"]["median"], wide["class_conv_grad"]["median"]
    grad_ratio = g_wp / g_wide if g_wide and math.isfinite(g_wide) else math.nan
    a = {int(i): v for i, v in wp["loss_curve"] if i < window}
    b = {int(i): v for i, v in wide["loss_curve"] if i < window}
    common = sorted(set(a) & set(b))
    diffs = [abs(a[i] / b[i] - 1) if math.isfinite(a[i]) and math.isfinite(b[i]) and b[i]
             else math.inf for i in common]
    nan_wp = wp["diverged_at"] is not None and wp["diverged_at"] < window
    nan_wide = wide["diverged_at"] is not None and wide["diverged_at"] < window
    same = (math.isfinite(grad_ratio) and abs(grad_ratio - 1) <= tolerance and bool(diffs)
            and max(diffs) <= tolerance and nan_wp == nan_wide)
    finite_diffs = [d for d in diffs if math.isfinite(d)]
    return {"seed": wp["seed"], "grad_ratio": grad_ratio, "loss_points": len(common),
            "loss_mean_rel_diff": sum(finite_diffs) / len(finite_diffs) if finite_diffs
            else math.nan,
            "loss_max_rel_diff": max(diffs) if diffs else math.nan,
            "nan": [nan_wp, nan_wide], "same": bool(same)}


def summarize(runs_dir: str, entries, seeds: Sequence[int], window: int = WINDOW) -> dict:
    """Every (entry, seed) of the grid under ``runs_dir``, the width test per seed, and the
    growth order of every diverged run."""
    runs = []
    for entry in entries:
        for seed in seeds:
            s = run_summary(os.path.join(runs_dir, entry.name, f"seed{seed}"), window)
            runs.append(s or {"name": entry.name, "seed": seed, "status": "not run"})
            runs[-1]["note"] = entry.note
    by = {(r["name"], r["seed"]): r for r in runs if r["status"] != "not run"}
    width = [w for w in (width_check(by.get((WIDTH_PRESERVING, s)), by.get((WIDTH_256, s)),
                                     window) for s in seeds) if w is not None]
    return {"runs_dir": runs_dir, "seeds": list(seeds), "window": window, "runs": runs,
            "width_check": width}


def _g(v, fmt="{:.3g}") -> str:
    return "n/a" if v is None or not math.isfinite(v) else fmt.format(v)


def ended(r: dict) -> str:
    if r["status"] == "not run":
        return "not run"
    if r["status"] == "diverged":
        return f"NaN at iteration {r['diverged_at']}"
    last = r["final_loss_iteration"]
    if r["status"] == "exploded":
        return (f"exploded at {r['explosion']['iteration']}, not recovered "
                f"(finite to {last})")
    return f"finite to {last + 1 if last is not None else '?'}"


def markdown(summary: dict) -> str:
    w = summary["window"]
    head = ["change", "seed", "how it ended", "final loss_cls (iteration)", "AP",
            f"class-conv weight gradient, iterations 0-{w - 1}: first / median / max",
            "first non-finite gradient"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["runs"]:
        if r["status"] == "not run":
            lines.append(f"| {r['note']} | {r['seed']} | not run |  |  |  |  |")
            continue
        c = r["class_conv_grad"]
        lines.append("| " + " | ".join([
            r["note"], str(r["seed"]), ended(r),
            f"{_g(r['final_loss_cls'], '{:.4g}')} ({r['final_loss_iteration']})",
            _g(r["AP"], "{:.1f}") if r["status"] != "diverged" else "0 (NaN)",
            f"{_g(c['first'])} / {_g(c['median'])} / {_g(c['max'])} ({c['n']} it.)",
            str(r["first_nonfinite_grad"]) if r["first_nonfinite_grad"] is not None else "none",
        ]) + " |")
    out = "\n".join(lines) + "\n"
    if summary["width_check"]:
        out += ("\nWidth-preserving init (64 channels) against 256 channels, iterations "
                f"0-{w - 1} (same within {WIDTH_TOLERANCE:.0%}: median class-conv gradient and "
                "loss_cls at every logged iteration):\n\n"
                "| seed | class-conv gradient, width-preserving / 256 | loss_cls relative "
                "difference: mean / max (points) | NaN before the window (wp, 256) | same |\n"
                "|---|---|---|---|---|\n")
        for c in summary["width_check"]:
            out += (f"| {c['seed']} | {_g(c['grad_ratio'])} | {_g(c['loss_mean_rel_diff'])} / "
                    f"{_g(c['loss_max_rel_diff'])} ({c['loss_points']}) | "
                    f"{c['nan'][0]}, {c['nan'][1]} | {'yes' if c['same'] else 'no'} |\n")
    grown = [r for r in summary["runs"] if r.get("growth")]
    if grown:
        out += (f"\nWhich gradients grow first (group norm >= {GROWTH_FACTOR:g}x its median "
                f"over the first {BASELINE_ITERS} iterations, or not finite), runs that "
                "diverged or had a non-finite gradient:\n\n"
                "| run | seed | order (iteration of 10x / of 100x) | baselines |\n"
                "|---|---|---|---|\n")
        for r in grown:
            order = ", ".join(
                f"**{g['group']}** ({g['grows_at']} / {g['at_100x']})" if i == 0 and
                g["grows_at"] is not None else
                f"{g['group']} ({g['grows_at'] if g['grows_at'] is not None else '-'} / "
                f"{g['at_100x'] if g['at_100x'] is not None else '-'})"
                for i, g in enumerate(r["growth"]))
            bases = ", ".join(f"{g['group']} {_g(g['baseline'])}" for g in r["growth"])
            out += f"| {r['name']} | {r['seed']} | {order} | {bases} |\n"
    return out


def plot(summary: dict, path: str, title: str) -> None:
    """Left: the class conv's weight gradient norm of every run (seed 0 solid, others dashed);
    right: the group norms of the base run (seed 0, else the first seed run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    names = []
    for r in summary["runs"]:
        if r["status"] == "not run":
            continue
        if r["name"] not in names:
            names.append(r["name"])
        pts = [(i, v) for i, v in r["class_conv_curve"] if math.isfinite(v) and v > 0]
        if pts:
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], linewidth=0.8,
                         color=f"C{names.index(r['name']) % 10}",
                         linestyle="-" if r["seed"] == summary["seeds"][0] else "--",
                         label=f"{r['name']} s{r['seed']}")
    axes[0].set(yscale="log", xlabel="iteration", title=f"gradient norm of {CLASS_CONV}")
    axes[0].legend(fontsize=6, ncol=2)
    base = [r for r in summary["runs"] if r["name"] == BASE and r["status"] != "not run"]
    if base:
        rows = read_grad_rows(os.path.join(summary["runs_dir"], BASE, f"seed{base[0]['seed']}"))
        for group, curve in group_norms(rows).items():
            pts = [(i, v) for i, v in curve if math.isfinite(v) and v > 0]
            axes[1].plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1, label=group)
        axes[1].set(yscale="log", xlabel="iteration",
                    title=f"{BASE} seed {base[0]['seed']}: gradient norm per group")
        axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
