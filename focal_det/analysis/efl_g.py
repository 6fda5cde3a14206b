"""EFL's g_j against each class's training image count, in numbers (docs/REPRODUCTION.md
Section 8's expectation, stated before the runs: g_j increases with the image count, the rare
classes' g_j lowest). ``tools/g_chart.py`` draws it and writes this summary beside the chart.

Per run, at its last ``class_stats.jsonl`` row: the mean, smallest and largest g_j of each
frequency group (r, c, f), whether the group means rise r < c < f, the class with the smallest
g_j and its image count, and Spearman's rank correlation of g_j with the image count (tied
values get their average rank).
"""
from typing import Dict, List, Sequence

import numpy as np

GROUPS = ("r", "c", "f")


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 0..n-1 of ``x``, tied values sharing the mean of their ranks."""
    x = np.asarray(x, float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # each distinct value's first rank
    return (first + (counts - 1) / 2.0)[inverse]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ (the Pearson correlation of the average ranks); nan if either is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def g_summary(rows: List[dict], image_counts: Sequence[int], frequencies: Sequence[str],
              key: str = "pos_neg") -> Dict:
    """The summary of one run's last row (see the module's docstring)."""
    if len(image_counts) != len(frequencies):
        raise ValueError(f"{len(image_counts)} image counts but {len(frequencies)} frequencies")
    last = rows[-1]
    g = np.asarray(last[key], float)
    if g.shape != (len(image_counts),):
        raise ValueError(f"{key} has {g.size} classes, the metadata {len(image_counts)}")
    freq = np.asarray(frequencies)
    groups = {}
    for grp in GROUPS:
        v = g[freq == grp]
        groups[grp] = ({"classes": int(v.size), "mean": float(v.mean()), "min": float(v.min()),
                        "max": float(v.max())} if v.size else None)
    means = [groups[k]["mean"] for k in GROUPS if groups[k]]
    low = int(np.argmin(g))
    return {"iteration": int(last["iteration"]) + 1, "groups": groups,
            "means_rise": bool(all(a < b for a, b in zip(means, means[1:]))),
            "lowest": {"class": low, "g": float(g[low]), "image_count": int(image_counts[low]),
                       "frequency": str(freq[low])},
            "spearman": spearman(g, image_counts)}


def markdown(summaries: Dict[str, Dict]) -> str:
    """One row per run: the group means [min-max], r < c < f, the lowest class, ρ."""
    lines = ["| run | iteration | g_j rare: mean [min-max] | common | frequent | r < c < f | "
             "lowest g_j (its images) | Spearman ρ (g_j, images) |",
             "|---|---|---|---|---|---|---|---|"]
    for run, s in summaries.items():
        cells = [f"{g['mean']:.3f} [{g['min']:.3f}-{g['max']:.3f}]" if g else "-"
                 for g in (s["groups"][k] for k in GROUPS)]
        lo = s["lowest"]
        lines.append(f"| {run} | {s['iteration']} | " + " | ".join(cells) +
                     f" | {'yes' if s['means_rise'] else 'no'} | {lo['g']:.3f} "
                     f"({lo['image_count']}, {lo['frequency']}) | {s['spearman']:.3f} |")
    return "\n".join(lines) + "\n"
