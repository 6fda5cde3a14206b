"""The paper's claims against a finished letters_paper grid (docs/REPRODUCTION.md, 6.11), each
decided by a rule written before the runs:

- Table 1a: α-balanced CE trains (no seed of α .25/.5/.75 NaN or exploded) and α .75 has the
  highest mean AP of the three;
- Table 1b: FL γ .5/1/2/5 (the paper's α per γ) all train and γ 2 has the highest mean AP;
- Table 3: FL* (2, 1) and (4, 0) train and each is as good as FL γ 2: its mean AP at most 1 AP
  below FL γ 2's, or its seeds' AP range overlaps FL γ 2's (and FL γ 2 itself trains);
- CE without the prior diverges: every seed NaN or exploded without recovery;
- FL beats the best α-CE: :func:`verdict.compare` says "beats";
- Figure 4: with γ 2, the hardest 5% of negatives carry at least half the negative loss.

A claim whose runs are missing, or lack a seed of the grid, is "not run", never "no".
"""
from typing import Dict, List, Optional, Sequence

from . import verdict as V

ALPHA_CE = ("ce_a0.25", "ce_a0.50", "ce_a0.75")
FL_GAMMAS = ("fl_g0.5_a0.50", "fl_g1_a0.25", "fl_g2_a0.25", "fl_g5_a0.25")
FL_STAR = ("flstar_g2_b1", "flstar_g4_b0")
STAR_MARGIN = 1.0  # AP below FL γ 2 that still counts as "as good" (Table 3: 33.8, 33.9 vs 34.0)


def _trains(r: dict) -> bool:
    return not r["diverged"]


def _range(r: dict):
    return min(r["AP_per_seed"]), max(r["AP_per_seed"])


def _best(rows: List[dict]) -> str:
    return max(rows, key=lambda r: r["AP"])["name"]


def _claim(claim: str, paper: str, here: str, agrees: Optional[bool]) -> Dict[str, str]:
    word = "not run" if agrees is None else ("**yes**" if agrees else "no")
    return {"claim": claim, "paper": paper, "here": here, "agrees": word}


def _group(by_name: Dict[str, dict], names) -> Optional[List[dict]]:
    rows = [by_name.get(n) for n in names]
    return None if any(r is None for r in rows) else rows


def _complete(rows: List[dict], seeds: Optional[Sequence[int]]) -> Dict[str, dict]:
    """The rows that have every seed of the grid (all rows when ``seeds`` is None)."""
    want = set(seeds or ())
    return {r["name"]: r for r in rows if want <= set(r["seeds"])}


def _aps(rows: List[dict]) -> str:
    return "; ".join(f"{r['name']} {V._ap(r)}" for r in rows)


def claims(rows: List[dict], figure4: Optional[dict] = None,
           seeds: Optional[Sequence[int]] = None) -> List[Dict[str, str]]:
    """``rows``: ``tools/ablate.py``'s; ``seeds``: the grid's (a row without one is missing)."""
    by_name = _complete(rows, seeds)
    out = []
    ce = _group(by_name, ALPHA_CE)
    out.append(_claim("Table 1a: α-CE trains; α .75 best", "10.8 / 30.2 / 31.1 AP",
                      _aps(ce) if ce else "not run",
                      None if ce is None else
                      all(map(_trains, ce)) and _best(ce) == "ce_a0.75"))
    fl = _group(by_name, FL_GAMMAS)
    out.append(_claim("Table 1b: FL γ .5-5 train; γ 2 best", "32.9 / 33.7 / 34.0 / 32.2 AP",
                      _aps(fl) if fl else "not run",
                      None if fl is None else
                      all(map(_trains, fl)) and _best(fl) == "fl_g2_a0.25"))
    star, fl2 = _group(by_name, FL_STAR), by_name.get("fl_g2_a0.25")
    if star is None or fl2 is None:
        out.append(_claim("Table 3: FL* as good as FL γ 2", "33.8, 33.9 vs 34.0 AP",
                          "not run", None))
    else:
        lo, hi = _range(fl2)
        good = [_trains(fl2) and _trains(r) and (r["AP"] >= fl2["AP"] - STAR_MARGIN
                                                 or (_range(r)[1] >= lo and _range(r)[0] <= hi))
                for r in star]
        out.append(_claim("Table 3: FL* as good as FL γ 2", "33.8, 33.9 vs 34.0 AP",
                          _aps(star) + f"; fl_g2_a0.25 {V._ap(fl2)}", all(good)))
    noprior = by_name.get("ce_noprior")
    out.append(_claim("CE without the prior diverges", "diverges",
                      V._ap(noprior) if noprior else "not run",
                      None if noprior is None else
                      len(noprior["diverged"]) == len(noprior["seeds"])))
    best = V.best_alpha_ce(ce) if ce else None
    if fl2 is None or best is None:
        out.append(_claim("FL γ 2 beats the best α-CE", "+2.9 AP", "not run", None))
    else:
        result = V.compare(fl2, best)
        out.append(_claim("FL γ 2 beats the best α-CE", "+2.9 AP",
                          f"{result} ({fl2['AP'] - best['AP']:+.1f} AP against {best['name']})",
                          result == "beats"))
    if figure4 is None:
        out.append(_claim("Figure 4: with γ 2 a few hard negatives carry the loss",
                          "qualitative", "not run", None))
    else:
        neg = figure4["negative"]["gammas"]["2"]
        share = neg["hardest_share"]["0.05"]
        out.append(_claim("Figure 4: with γ 2 a few hard negatives carry the loss",
                          "qualitative",
                          f"hardest 5% carry {share:.0%}; half the loss from the hardest "
                          f"{neg['fraction_carrying_half']:.2%}", share >= 0.5))
    return out


def markdown(rows: List[Dict[str, str]]) -> str:
    lines = ["| claim (paper) | paper | here (mean ± std over seeds (per seed)) | agrees? |",
             "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['paper']} | {c['here']} | {c['agrees']} |" for c in rows]
    return "\n".join(lines) + "\n"
