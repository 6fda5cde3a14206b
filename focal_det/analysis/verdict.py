"""The verdict of the paper-faithful grid (docs/REPRODUCTION.md, Section 6), by the rule fixed
before the runs: the best α-balanced CE, FL γ 2 against it beyond the seed spread or not,
whether their order is settled, CE without the prior's divergence, and the attribution arm
(the same configs with the built-in stabilizers) side by side."""
import math
from typing import Dict, List, Optional

ALPHA_CE = "BalancedCrossEntropy"
FL_NAME = "fl_g2_a0.25"
STAB = "_stab"


def survival(r: dict) -> float:
    """The mean iteration at which a config's seeds turned NaN/inf (inf for a seed that did
    not)."""
    its = [math.inf if i is None else float(i) for i in r.get("diverged_at") or [None]]
    return sum(its) / len(its)


def best_alpha_ce(rows: List[dict]) -> Optional[dict]:
    """The α-balanced CE row with the highest mean AP; among equal APs (e.g. all diverged, AP
    0) the one whose seeds diverged latest on average; then the first in grid order."""
    best = None
    for r in rows:
        if r["loss"] != ALPHA_CE or math.isnan(r["AP"]):
            continue
        if best is None or (r["AP"], survival(r)) > (best["AP"], survival(best)):
            best = r
    return best


def compare(fl: dict, ce: dict) -> str:
    """"beats" / "loses" (every seed of FL above / below every seed of CE) or "within"."""
    if min(fl["AP_per_seed"]) > max(ce["AP_per_seed"]):
        return "beats"
    if max(fl["AP_per_seed"]) < min(ce["AP_per_seed"]):
        return "loses"
    return "within"


def _curve(r: dict, at) -> Dict[int, float]:
    """Mean AP per evaluated iteration; a config whose every seed diverged is 0 everywhere (a
    diverged run does not come back)."""
    if r["diverged"] and len(r["diverged"]) == len(r["seeds"]) and not r["ap_curve"]:
        return {i: 0.0 for i in at}
    return {c[0]: c[1] for c in r["ap_curve"]}


def settled(fl: dict, ce: dict) -> Optional[bool]:
    """Same order of the mean AP at the last two evaluation points (None: fewer than two)."""
    at = [c[0] for c in fl["ap_curve"] or ce["ap_curve"]]
    a, b = _curve(fl, at), _curve(ce, at)
    its = sorted(set(a) & set(b))
    if len(its) < 2:
        return None
    return (a[its[-2]] > b[its[-2]]) == (a[its[-1]] > b[its[-1]])


def _ap(r: Optional[dict]) -> str:
    if r is None:
        return "not run"
    if r["diverged"] and len(r["diverged"]) == len(r["seeds"]):
        return "diverged (" + "; ".join(d for d in r["divergence"] if d) + ")"
    per_seed = " / ".join(f"{v:.1f}" for v in r["AP_per_seed"])
    std = "" if math.isnan(r["AP_std"]) else f" ± {r['AP_std']:.1f}"
    note = ("; " + "; ".join(d for d in r["divergence"] if d)) if any(r["divergence"]) else ""
    return f"{r['AP']:.1f}{std} ({per_seed}){note}"


PARTS = ("bn", "clip", "warmup")


def verdict(faithful: List[dict], stabilized: List[dict], parts: List[dict] = ()) -> Dict:
    by_name = {r["name"]: r for r in faithful}
    fl, ce = by_name.get(FL_NAME), best_alpha_ce(faithful)
    out = {"best_alpha_ce": ce["name"] if ce else None, "fl": FL_NAME}
    if fl and ce:
        out.update(result=compare(fl, ce), settled=settled(fl, ce),
                   fl_minus_ce=fl["AP"] - ce["AP"])
    stab = {r["name"][:-len(STAB)]: r for r in stabilized if r["name"].endswith(STAB)}
    part = {r["name"]: r for r in parts}
    bases = list(stab) + [n.rsplit("_", 1)[0] for n in part
                          if n.rsplit("_", 1)[0] not in stab and n.rsplit("_", 1)[1] in PARTS]
    out["attribution"] = [
        {"name": n, "faithful": _ap(by_name.get(n)),
         **{p: _ap(part.get(f"{n}_{p}")) for p in PARTS}, "stabilized": _ap(stab.get(n))}
        for n in dict.fromkeys(bases)]
    if fl and ce and FL_NAME in stab and ce["name"] in stab:
        s_fl, s_ce = stab[FL_NAME], stab[ce["name"]]
        out["stabilized_result"] = compare(s_fl, s_ce)
        out["stabilized_fl_minus_ce"] = s_fl["AP"] - s_ce["AP"]
    return out


def sentence(v: Dict) -> str:
    if "result" not in v:
        return "No verdict: FL γ 2 or every α-balanced CE run is missing."
    words = {"beats": "beats", "loses": "loses to", "within": "is within the seed spread of"}
    gap = f"{v['fl_minus_ce']:+.1f} AP"
    order = {True: "the order is the same at the last two evaluations (a diverged run counts 0)",
             False: "the order changed between the last two evaluations (not settled)",
             None: "one evaluation only"}[v["settled"]]
    spread = "" if v["result"] == "within" else " beyond the seed spread"
    return (f"On the paper's recipe FL γ 2 {words[v['result']]} the best α-balanced CE "
            f"({v['best_alpha_ce']}){spread}: {gap} in mean AP; {order}.")


def markdown(v: Dict, faithful: List[dict]) -> str:
    lines = [sentence(v), "", "| run | loss | γ | α | β | init | AP: paper's recipe (seeds) | "
             "paper AP |", "|---|---|---|---|---|---|---|---|"]
    for r in faithful:
        lines.append(f"| {r['name']} | {r['loss']} | {r['gamma']} | {r['alpha']} | {r['beta']} "
                     f"| {r['init']} | {_ap(r)} | {r['paper_ap']} |")
    if v["attribution"]:
        lines += ["", "| run | paper's recipe | + BN in FPN and head | + clip 10 | + warm-up "
                  "1/1000 over 100 | + all three (built-in stabilizers) |", "|---|---|---|---|---|---|"]
        lines += [f"| {a['name']} | {a['faithful']} | {a['bn']} | {a['clip']} | {a['warmup']} "
                  f"| {a['stabilized']} |" for a in v["attribution"]]
    return "\n".join(lines) + "\n"
