"""Divergence as a result: a run's classification-loss curve from its ``metrics.json`` and the
rule that calls a loss explosion, so that "does not diverge" means something.

A run *diverged* when its loss became NaN/inf (Detectron2 stops it; ``ablation.run_one`` reads
the iteration from the log). It *exploded* when, at some logged iteration, ``loss_cls`` is at
least ``EXPLODE_FACTOR`` (100: two orders of magnitude) times the lowest value logged before
it, and it *never recovered* when the last logged value is still at least ``RECOVER_FACTOR``
(10) times that lowest value. Logged values are Detectron2's (a median over the last 20
iterations, every 20 iterations). The rule was fixed before the paper-recipe grid ran.
"""
import math
from typing import List, Optional

from ..utils.metrics import read_metrics

EXPLODE_FACTOR = 100.0
RECOVER_FACTOR = 10.0


def loss_curve(run_dir: str, key: str = "loss_cls") -> List[List[float]]:
    """[[iteration, value], ...] of ``key`` in ``run_dir/metrics.json`` (a resumed run logs
    some iterations twice: the last one counts)."""
    points = {int(row["iteration"]): float(row[key]) for row in read_metrics(run_dir)
              if key in row}
    return [[i, v] for i, v in sorted(points.items())]


def explosion(curve: List[List[float]]) -> Optional[dict]:
    """The first explosion of ``curve`` (see the module docstring) or None."""
    lowest = math.inf
    for i, (it, value) in enumerate(curve):
        if not math.isfinite(value):
            return {"iteration": int(it), "from": lowest, "to": value, "recovered": False}
        if lowest < math.inf and value >= EXPLODE_FACTOR * lowest:
            last = curve[-1][1]
            recovered = math.isfinite(last) and last < RECOVER_FACTOR * lowest
            return {"iteration": int(it), "from": lowest, "to": value,
                    "final": last, "recovered": bool(recovered)}
        lowest = min(lowest, value)
    return None


def plot_loss_curves(runs: List[dict], path: str, title: str) -> None:
    """loss_cls against iterations (log scale) of every run; red: diverged or exploded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in runs:
        curve = r.get("loss_curve") or []
        if not curve:
            continue
        bad = r.get("status") in ("diverged", "exploded")
        finite = [(i, v) for i, v in curve if math.isfinite(v) and v > 0]
        if not finite:
            continue
        ax.plot([p[0] for p in finite], [p[1] for p in finite],
                color="tab:red" if bad else None, linewidth=1.8 if bad else 0.9,
                alpha=1.0 if bad else 0.6,
                label=f"{r['name']} seed {r['seed']}" + (f" ({r['status']})" if bad else ""))
    ax.set_yscale("log")
    ax.set_xlabel("training iterations")
    ax.set_ylabel("loss_cls (Detectron2's 20-iteration median)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="upper right", ncol=2)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
