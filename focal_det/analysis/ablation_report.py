"""Tables and charts of a loss ablation (``tools/ablate.py``): mean and spread over seeds per
config, a markdown table, a bar chart of final AP and a chart of AP against iterations."""
import math
from typing import List

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _mean_std(values: List[float]):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(grid, results: List[dict]) -> List[dict]:
    """One row per config of ``grid`` (``tools/ablate.py``'s entries) that has results."""
    rows = []
    for entry in grid:
        runs = [r for r in results if r["name"] == entry.name and r["status"] != "dry-run"]
        if not runs:
            continue
        row = {"name": entry.name, **entry.describe(), "paper_ap": entry.paper_ap or "",
               "seeds": [r["seed"] for r in runs],
               "diverged": [r["seed"] for r in runs if r["status"] in ("diverged", "exploded")],
               "divergence": [_divergence(r) for r in runs],
               "diverged_at": [r.get("diverged_at") for r in runs],
               "AP_per_seed": [r["AP"] for r in runs]}
        for m in METRICS:
            row[m], row[m + "_std"] = _mean_std([r[m] for r in runs])
        row["ap_curve"] = mean_curve([r.get("ap_curve") or [] for r in runs
                                      if r["status"] == "ok"])
        rows.append(row)
    return rows


def _divergence(run: dict) -> str:
    """How a run ended, for the table: "" (fine), NaN/inf, or a loss explosion."""
    boom = run.get("explosion")
    if run["status"] == "diverged":
        return f"seed {run['seed']} (NaN/inf at iteration {run['diverged_at']})"
    if boom and not boom["recovered"]:
        return f"seed {run['seed']} (loss x{boom['to'] / boom['from']:.0f} at iteration " \
               f"{boom['iteration']}, not recovered)"
    if boom:
        return f"no (seed {run['seed']}: loss x{boom['to'] / boom['from']:.0f} at iteration " \
               f"{boom['iteration']}, recovered)"
    return ""


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def markdown_table(rows: List[dict]) -> str:
    head = ["run", "loss", "γ", "α", "β", "bias init", "seeds", "AP", "AP50", "AP75", "APs",
            "APm", "APl", "AP per seed", "diverged", "paper AP", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        diverged = "; ".join(d for d in r.get("divergence", []) if d) or "no"
        cells = [r["name"], r["loss"], r["gamma"], r["alpha"], r["beta"], r["init"],
                 str(len(r["seeds"]))]
        cells += [_cell(r[m], r[m + "_std"]) for m in METRICS]
        cells += [" / ".join(f"{v:.1f}" for v in r["AP_per_seed"]), diverged, r["paper_ap"],
                  r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 2))
    for i, r in enumerate(rows):
        color = "tab:red" if r["diverged"] else ("tab:blue" if "Focal" in r["loss"]
                                                  else "tab:gray")
        std = 0.0 if math.isnan(r["AP_std"]) else r["AP_std"]
        ax.barh(i, r["AP"], xerr=std, color=color, capsize=3)
        for ap in r["AP_per_seed"]:
            ax.plot(ap, i, "k.", markersize=4)
        label = f"{r['AP']:.1f}" + (" (diverged)" if r["diverged"] else "")
        ax.text(r["AP"] + std + 0.3, i, label, va="center", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("COCO box AP (bar: mean over seeds, whisker: std, dots: seeds)")
    ax.set_ylabel("loss configuration")
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # (tight_layout warns on long labels)
    plt.close(fig)




def mean_curve(curves: List[list]) -> List[list]:
    """[[iterations, mean AP, std AP, n], ...] over the iterations every seed evaluated at."""
    if not curves:
        return []
    common = set.intersection(*({int(i) for i, _ in c} for c in curves))
    out = []
    for it in sorted(common):
        values = [ap for c in curves for i, ap in c if int(i) == it]
        mean, std = _mean_std(values)
        out.append([it, mean, std, len(values)])
    return out


def best_of(rows: List[dict], losses) -> dict:
    """The row with the highest mean AP among ``losses`` (names of loss classes); among equal
    APs (e.g. all diverged) the one whose seeds went NaN latest on average, as
    :func:`verdict.best_alpha_ce` decides."""
    from .verdict import survival

    candidates = [r for r in rows if r["loss"] in losses and not math.isnan(r["AP"])]
    return max(candidates, key=lambda r: (r["AP"], survival(r))) if candidates else None


def plot_curves(rows: List[dict], path: str, title: str, highlight: List[str]) -> None:
    """AP against iterations (mean over seeds, band: +- std); ``highlight`` rows drawn bold,
    the others thin, so that a reader sees whether the ranking is still changing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in rows:
        nan_at = [i for i in r.get("diverged_at") or [] if i is not None]
        if not r["ap_curve"] and nan_at:  # every seed NaN: AP 0 from there on, drawn as x
            bold = r["name"] in highlight
            ax.plot(nan_at, [0.0] * len(nan_at), "x", markersize=9 if bold else 5,
                    markeredgewidth=2.5 if bold else 1,
                    label=f"{r['name']}: NaN at iteration {', '.join(map(str, nan_at))}")
            continue
        if len(r["ap_curve"]) < 2:
            continue
        its = [c[0] for c in r["ap_curve"]]
        mean = [c[1] for c in r["ap_curve"]]
        std = [0.0 if math.isnan(c[2]) else c[2] for c in r["ap_curve"]]
        bold = r["name"] in highlight
        label = r["name"] + (" (highlighted)" if bold else "")
        if nan_at:  # a seed that went NaN has no curve: the line is the other seeds' mean
            label += f" (finished seeds only; NaN at iteration {', '.join(map(str, nan_at))})"
        line, = ax.plot(its, mean, marker="o", linewidth=2.5 if bold else 0.9,
                        alpha=1.0 if bold else 0.55, markersize=5 if bold else 3, label=label)
        if bold:
            ax.fill_between(its, [m - s for m, s in zip(mean, std)],
                            [m + s for m, s in zip(mean, std)], color=line.get_color(),
                            alpha=0.15)
    ax.set_xlabel("training iterations (batch 8)")
    ax.set_ylabel("COCO box AP on the val split (mean over seeds; band: ± std)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
