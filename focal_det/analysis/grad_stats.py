"""Summaries of ``grad_stats.jsonl`` (``focal_det.engine.grad_stats``): per run, how often
gradient clipping fires (or would fire, where it is off) over the logged first iterations, and
the gradient norms of the class conv and of the whole model, CE against FL; a markdown table
and a chart (``tools/grad_stats.py``)."""
import math
import os
import statistics
from typing import Dict, List

from ..engine.grad_stats import FILENAME
from ..utils.metrics import read_json_lines

KEYS = ("head.cls_score.weight", "head.cls_score.bias")


def read_rows(run_dir: str) -> List[dict]:
    path = os.path.join(run_dir, FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: train with "
                                "MODEL.FOCAL_DET.GRAD_STATS_ITERS > 0")
    # a resumed run logs some iterations twice: the last row of an iteration counts
    rows: Dict[int, dict] = {row["iteration"]: row for row in read_json_lines(path)}
    return [rows[i] for i in sorted(rows)]


def _stats(values: List[float]) -> dict:
    finite = [v for v in values if math.isfinite(v)]
    return {"first": values[0] if values else float("nan"),
            "median": statistics.median(finite) if finite else float("nan"),
            "max": max(finite) if finite else float("nan"),
            "non_finite": len(values) - len(finite)}


def summarize(label: str, run_dir: str) -> dict:
    rows = read_rows(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/{FILENAME} has no rows")
    clip = rows[0]["clip"]
    names = sorted(rows[0]["norms"])
    out = {"label": label, "run_dir": run_dir, "iterations": len(rows),
           "last_iteration": rows[-1]["iteration"], "clip": clip,
           "fired_share": sum(r["fired"] > 0 for r in rows) / len(rows),
           "fired_tensors_mean": sum(r["fired"] for r in rows) / len(rows),
           "fired_tensors_first10": sum(r["fired"] for r in rows[:10]) / min(10, len(rows)),
           "tensors": len(names),
           "total_norm": _stats([r["total_norm"] for r in rows]),
           "curves": {k: [[r["iteration"], r["norms"].get(k, float("nan"))] for r in rows]
                      for k in KEYS}}
    for k in KEYS:
        out[k] = _stats([r["norms"].get(k, float("nan")) for r in rows])
    medians = {n: statistics.median([r["norms"][n] for r in rows if n in r["norms"]])
               for n in names}
    out["largest_tensors"] = sorted(medians.items(), key=lambda kv: -kv[1])[:5]
    return out


def _g(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3g}"


def markdown_table(summaries: List[dict]) -> str:
    head = ["run", "clipping", "iterations logged", "iterations where clipping fires",
            "tensors clipped per iteration (first 10 / all)", "cls_score.weight norm: first / "
            "median / max", "cls_score.bias norm: first / median / max",
            "all-gradient norm: median / max", "largest tensors (median norm)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        clip = s["clip"]
        clipping = (f"{clip['type']} {clip['value']:g}" if clip["enabled"]
                    else f"off (counted at {clip['type']} {clip['value']:g})")
        w, b, t = s[KEYS[0]], s[KEYS[1]], s["total_norm"]
        largest = ", ".join(f"{n.replace('backbone.', '')} {_g(v)}"
                            for n, v in s["largest_tensors"][:3])
        lines.append("| " + " | ".join([
            s["label"], clipping, f"{s['iterations']} (to {s['last_iteration']})",
            f"{100 * s['fired_share']:.0f}%",
            f"{s['fired_tensors_first10']:.1f} / {s['fired_tensors_mean']:.2f}",
            f"{_g(w['first'])} / {_g(w['median'])} / {_g(w['max'])}",
            f"{_g(b['first'])} / {_g(b['median'])} / {_g(b['max'])}",
            f"{_g(t['median'])} / {_g(t['max'])}", largest]) + " |")
    return "\n".join(lines) + "\n"


def plot(summaries: List[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharex=True)
    for ax, key in zip(axes, KEYS):
        for s in summaries:
            pts = [(i, v) for i, v in s["curves"][key] if math.isfinite(v) and v > 0]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1, label=s["label"])
        clip_values = {s["clip"]["value"] for s in summaries}
        for v in clip_values:
            ax.axhline(v, color="k", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(f"gradient norm of {key} (dashed: clip value)", fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
