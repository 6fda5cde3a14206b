"""EFL's claim on the long-tailed built-in data, decided by docs/REPRODUCTION.md Section 8's rule
(written before the runs) from the ``--grid longtail`` runs of ``tools/ablate.py``.

Per run: the last evaluation's AP, APr, APc and APf (``bbox/AP*`` in its ``metrics.json``; the
ablation's ``result.json`` has the COCO columns only). A diverged run counts 0 and is named.
Per configuration: the mean over the seeds and the *seed spread* (largest minus smallest).
For a pair (FL, EFL) with the same sampling, Δ = mean(EFL) − mean(FL) and spread = the larger
of the two configurations' ranges of that metric: EFL *raises APr beyond the spread* if
Δ APr > spread(APr); it *lowers APf beyond it* if −Δ APf > spread(APf). The claim holds for the
pair if the first is true and the second false. Overall: "holds" if it holds for both pairs,
"holds without RFS only" / "holds with RFS only", else "does not hold"; a pair with a missing
seed is "not run" (never "no").
"""
import json
import math
import os
from typing import Dict, List, Optional, Sequence

METRICS = ("AP", "APr", "APc", "APf")
PAIRS = (("fl", "efl_s4"), ("fl_rfs", "efl_s4_rfs"))


def _last_eval(metrics_path: str) -> Optional[dict]:
    last = None
    if not os.path.isfile(metrics_path):
        return None
    with open(metrics_path) as f:
        for line in f:
            line = line.strip()
            if line:
                row = json.loads(line)
                if "bbox/APr" in row:
                    last = row
    return last


def read_run(run_dir: str) -> Optional[dict]:
    """One finished run's numbers, or None if it has not finished (no ``result.json``)."""
    result_path = os.path.join(run_dir, "result.json")
    if not os.path.isfile(result_path):
        return None
    with open(result_path) as f:
        result = json.load(f)
    diverged = result.get("status") == "diverged"
    row = {"status": result.get("status"), "diverged": diverged,
           "diverged_at": result.get("diverged_at"), "iteration": None}
    ev = None if diverged else _last_eval(os.path.join(run_dir, "metrics.json"))
    if not diverged and ev is None:
        raise ValueError(f"{run_dir}: finished but its metrics.json has no bbox/APr "
                         "(was it evaluated with the LVIS evaluator?)")
    for m in METRICS:
        v = 0.0 if diverged else float(ev[f"bbox/{m}"])
        row[m] = 0.0 if math.isnan(v) else v
    if ev is not None:
        row["iteration"] = ev.get("iteration")
        row["per_class"] = {k[len("bbox/AP-"):]: v for k, v in ev.items()
                            if k.startswith("bbox/AP-")}
    return row


def read_config(root: str, name: str, seeds: Sequence[int]) -> dict:
    runs = {s: read_run(os.path.join(root, name, f"seed{s}")) for s in seeds}
    done = {s: r for s, r in runs.items() if r is not None}
    out = {"name": name, "seeds": list(seeds), "runs": runs,
           "complete": len(done) == len(seeds),
           "diverged": [s for s, r in done.items() if r["diverged"]]}
    for m in METRICS:
        vals = [r[m] for r in done.values()]
        out[m] = {"per_seed": vals, "mean": sum(vals) / len(vals) if vals else None,
                  "spread": (max(vals) - min(vals)) if vals else None}
    return out


def decide_pair(fl: dict, efl: dict) -> dict:
    """Section 8's rule for one (FL, EFL) pair."""
    if not (fl["complete"] and efl["complete"]):
        return {"fl": fl["name"], "efl": efl["name"], "holds": None, "reasons": ["not run"]}
    d = {m: efl[m]["mean"] - fl[m]["mean"] for m in METRICS}
    spread = {m: max(fl[m]["spread"], efl[m]["spread"]) for m in METRICS}
    raises_r = d["APr"] > spread["APr"]
    lowers_f = -d["APf"] > spread["APf"]
    reasons = []
    if not raises_r:
        reasons.append(f"APr does not rise beyond the seed spread (Δ {d['APr']:+.2f}, spread "
                       f"{spread['APr']:.2f})")
    if lowers_f:
        reasons.append(f"APf falls beyond the seed spread (Δ {d['APf']:+.2f}, spread "
                       f"{spread['APf']:.2f})")
    marked = bool(fl["diverged"] or efl["diverged"])
    return {"fl": fl["name"], "efl": efl["name"], "delta": d, "spread": spread,
            "raises_apr": raises_r, "lowers_apf": lowers_f, "holds": raises_r and not lowers_f,
            "reasons": reasons, "with_diverged_runs": marked}


def overall(pairs: List[dict]) -> str:
    plain, rfs = (p["holds"] for p in pairs)
    if plain is None or rfs is None:
        return "not run"
    if plain and rfs:
        return "holds"
    if plain:
        return "holds without RFS only"
    if rfs:
        return "holds with RFS only"
    return "does not hold"


def summarize(root: str, seeds: Sequence[int] = (0, 1, 2)) -> dict:
    configs = {n: read_config(root, n, seeds) for pair in PAIRS for n in pair}
    pairs = [decide_pair(configs[a], configs[b]) for a, b in PAIRS]
    rfs_effect = {}
    for plain, rfs in (("fl", "fl_rfs"), ("efl_s4", "efl_s4_rfs")):
        if configs[plain]["complete"] and configs[rfs]["complete"]:
            rfs_effect[f"{rfs} - {plain}"] = {m: configs[rfs][m]["mean"] - configs[plain][m]["mean"]
                                             for m in METRICS}
    return {"configs": configs, "pairs": pairs, "verdict": overall(pairs),
            "rfs_effect_no_rule": rfs_effect}


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(s: dict) -> str:
    lines = ["| config | seed | AP | APr | APc | APf | note |", "|---|---|---|---|---|---|---|"]
    for name, c in s["configs"].items():
        for seed, r in c["runs"].items():
            if r is None:
                lines.append(f"| {name} | {seed} | | | | | not finished |")
                continue
            note = f"diverged at {r['diverged_at']}" if r["diverged"] else f"it. {r['iteration']}"
            lines.append(f"| {name} | {seed} | " + " | ".join(_f(r[m]) for m in METRICS)
                         + f" | {note} |")
        lines.append(f"| **{name}** | mean (spread) | " + " | ".join(
            f"{_f(c[m]['mean'])} ({_f(c[m]['spread'])})" for m in METRICS) + " | |")
    lines += ["", "| pair | Δ APr (spread) | Δ APf (spread) | Δ AP | claim |", "|---|---|---|---|---|"]
    for p in s["pairs"]:
        if p["holds"] is None:
            lines.append(f"| {p['fl']} / {p['efl']} | | | | not run |")
            continue
        word = "holds" if p["holds"] else "fails: " + "; ".join(p["reasons"])
        if p["with_diverged_runs"]:
            word += " (with diverged runs counted as 0)"
        lines.append(f"| {p['fl']} / {p['efl']} | {p['delta']['APr']:+.2f} ({p['spread']['APr']:.2f})"
                     f" | {p['delta']['APf']:+.2f} ({p['spread']['APf']:.2f}) | "
                     f"{p['delta']['AP']:+.2f} | {word} |")
    lines += ["", f"**Verdict (Section 8's rule): {s['verdict']}.**"]
    for k, d in s["rfs_effect_no_rule"].items():
        lines.append(f"Repeat-factor sampling, no rule: {k}: " + ", ".join(
            f"{m} {d[m]:+.2f}" for m in METRICS) + ".")
    return "\n".join(lines) + "\n"
