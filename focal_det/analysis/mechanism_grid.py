"""``letters_paper_mechanism``: issue 37's single-change runs (docs/REPRODUCTION.md Section 7).

α-CE α .75 on the corrected recipe (``configs/builtin/retinanet_R18_letters_paper.yaml``), no LR
step, gradient norms of the first 100 iterations, one change each: the prior π 1e-4, momentum 0,
a constant normalizer (the mean foreground count of a batch of 8, measured over the config's
first 100 batches: 42.72), the warm-up from 0.001, and the base LR x 1/2, 1/4, 1/8, 1/16 (the
*measured boundary*: the largest of these at which both seeds stay finite to 500 iterations).
``fl_g2_lr*``: FL γ 2's boundary measured upward (LR x 2, 4, 8). ``ce_a0.25_lr*`` and
``ce_a0.50_lr*``: the other α-CEs at the candidate LRs, down to 1/64 (issue 37 item 4 picks one
LR for every loss from them; Section 7.2). Importing this module adds the grid to :data:`grids.GRIDS`.
"""
from .grids import GRIDS, KEY, Entry

BASE_LR = 0.005  # the config's SOLVER.BASE_LR
MEAN_BATCH_FOREGROUND = 42.72  # Section 7 (c): 100 batches of 8, SEED 2017, range 14-75
_COMMON = ("SOLVER.STEPS", "()", KEY + "GRAD_STATS_ITERS", "100")
LR_DIVISORS = (2, 4, 8, 16)
# α .25 and .5 only (Section 7.2, fixed before those runs): α .25 went NaN at 1/4 and (seed 0) 1/8
EXTRA_DIVISORS = (32, 64)
FL_LR_MULTIPLIERS = (2, 4, 8)


def lr_opts(lr: float):
    return ("SOLVER.BASE_LR", repr(lr))


def _ce(name: str, change=(), note: str = "", alpha: float = 0.75) -> Entry:
    return Entry(name, "BalancedCrossEntropy", alpha=alpha, paper_ap="31.1" if alpha == 0.75
                 else None, extra=_COMMON + tuple(change), note=note)


MECHANISM_GRID = [
    _ce("ce_a0.75_base", (), "the corrected recipe (Section 6.10)"),
    *[_ce(f"ce_a0.75_lr1_{d}", lr_opts(BASE_LR / d), f"(lr) base LR x 1/{d}")
      for d in LR_DIVISORS],
    _ce("ce_a0.75_prior1e-4", (KEY + "HEAD.PRIOR_PROB", "0.0001"), "(p) prior 1e-4"),
    _ce("ce_a0.75_momentum0", ("SOLVER.MOMENTUM", "0.0"), "(m) momentum 0"),
    _ce("ce_a0.75_constnorm", (KEY + "LOSS_NORMALIZER", "constant",
                               KEY + "LOSS_NORMALIZER_VALUE", repr(MEAN_BATCH_FOREGROUND)),
        "(n) a constant normalizer, the mean foreground count of a batch"),
    _ce("ce_a0.75_warmup0.001", ("SOLVER.WARMUP_FACTOR", "0.001"), "(w) warm-up from 0.001"),
    *[Entry(f"fl_g2_lr{m}x", "FocalLoss", gamma=2.0, alpha=0.25, paper_ap="34.0",
            extra=_COMMON + lr_opts(BASE_LR * m), note=f"FL γ 2 at base LR x {m}")
      for m in FL_LR_MULTIPLIERS],
    *[_ce(f"ce_a{a:.2f}_lr1_{d}", lr_opts(BASE_LR / d), f"α-CE α {a} at base LR x 1/{d}",
          alpha=a)
      for a in (0.25, 0.5) for d in LR_DIVISORS + EXTRA_DIVISORS],
]
GRIDS["letters_paper_mechanism"] = MECHANISM_GRID
