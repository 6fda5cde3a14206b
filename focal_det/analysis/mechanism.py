"""Issue 37 (c): the single-change runs of ``letters_paper_mechanism`` in the order and with the
stop rules fixed in docs/REPRODUCTION.md Section 7, and the *measured boundary* they give.

- α-CE α .75's LR sweep from the top (the config's LR, then x 1/2, 1/4, 1/8, 1/16), both seeds
  at each LR; the sweep stops at the first LR at which both seeds stay finite;
- the single changes at the config's LR: prior 1e-4, momentum 0, constant normalizer, warm-up
  from 0.001;
- FL γ 2 upward (x 2, 4, 8), stopping at the first LR at which a seed goes NaN;
- α-CE α .25 from α .75's boundary downward (to 1/64), then α .5 from the lower of the two
  boundaries downward, each stopping at its first LR with both seeds finite (issue 37 item 4's
  one LR for every loss: the largest LR at which all three are finite; α .5 above α .25's
  boundary cannot set it, so it is not run there; Section 7.2).

"Finite" means the run reached its last iteration (status ``ok`` or ``exploded``); a run whose
loss became NaN/inf is ``diverged``. Every run goes through :func:`ablation.run_one`, so a
finished run is never repeated and an interrupted one resumes.
"""
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence

from .grids import GRIDS
from .mechanism_grid import BASE_LR, EXTRA_DIVISORS, FL_LR_MULTIPLIERS, LR_DIVISORS

GRID = "letters_paper_mechanism"
SINGLE_CHANGES = ("ce_a0.75_prior1e-4", "ce_a0.75_momentum0", "ce_a0.75_constnorm",
                  "ce_a0.75_warmup0.001")


def finite(result: dict) -> bool:
    return result.get("status") in ("ok", "exploded")


def ce_ladder(alpha: float) -> List[tuple]:
    """(LR, entry name) of an α-CE's sweep, largest LR first."""
    if alpha == 0.75:
        return [(BASE_LR, "ce_a0.75_base")] + [(BASE_LR / d, f"ce_a0.75_lr1_{d}")
                                                for d in LR_DIVISORS]
    return [(BASE_LR / d, f"ce_a{alpha:.2f}_lr1_{d}") for d in LR_DIVISORS + EXTRA_DIVISORS]


def fl_ladder() -> List[tuple]:
    return [(BASE_LR * m, f"fl_g2_lr{m}x") for m in FL_LR_MULTIPLIERS]


def _entry(name: str):
    return next(e for e in GRIDS[GRID] if e.name == name)


def run_plan(run: Callable[[object, int], dict], seeds: Sequence[int] = (0, 1),
             parallel: bool = False) -> Dict:
    """Run the plan; ``run(entry, seed)`` trains one run (or returns its finished result).
    ``parallel``: an entry's seeds side by side (each run is its own process)."""
    results: Dict[str, List[dict]] = {}

    def both(name: str) -> List[dict]:
        entry = _entry(name)
        if parallel:
            with ThreadPoolExecutor(len(seeds)) as pool:
                results[name] = list(pool.map(lambda s: run(entry, s), seeds))
        else:
            results[name] = [run(entry, s) for s in seeds]
        return results[name]

    boundary = None
    for lr, name in ce_ladder(0.75):
        if all(finite(r) for r in both(name)):
            boundary = lr
            break
    for name in SINGLE_CHANGES:
        both(name)
    for lr, name in fl_ladder():
        if not all(finite(r) for r in both(name)):
            break
    for alpha in (0.25, 0.5):
        found = False
        for lr, name in ce_ladder(alpha):
            if boundary is not None and lr > boundary:
                continue
            if all(finite(r) for r in both(name)):
                boundary, found = lr, True  # α .5 starts at the lower of the boundaries
                break
        if not found:  # no common LR within the ladder: α .5 cannot change that
            break
    return results


def common_lr(results: Dict[str, List[dict]]) -> Optional[float]:
    """Issue 37 item 4's one LR: the largest LR at which α-CE α .25, .5 and .75 each have every
    seed finite (an α .75 LR below its measured boundary counts as finite: not run, Section 7)."""
    ok = []
    for alpha in (0.25, 0.5, 0.75):
        b = measured_boundary(results, ce_ladder(alpha))
        if b is None:
            return None
        ok.append(b["lr"])
    return min(ok)


def measured_boundary(results: Dict[str, List[dict]], ladder: List[tuple],
                      upward: bool = False) -> Optional[dict]:
    """The largest LR of ``ladder`` at which every seed that ran is finite, with whether that is
    exact or a bound: ``{"lr", "kind"}`` where kind is "boundary" (the next LR up diverged or was
    the top of the ladder's run), "at least" (no LR above it was run) or None if no LR passed."""
    ran = [(lr, results[n]) for lr, n in ladder if n in results]
    ok = [lr for lr, rs in ran if rs and all(finite(r) for r in rs)]
    if not ok:
        return None
    best = max(ok)
    above = [lr for lr, rs in ran if lr > best]
    return {"lr": best, "kind": "boundary" if above else "at least"}
