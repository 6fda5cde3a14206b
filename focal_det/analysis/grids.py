"""The grids of ``tools/ablate.py``: one :class:`Entry` per configuration (a name, its folder, and
the cfg options that define it), the built-in grids, and reading a grid from JSON.

- ``paper``: Tables 1a, 1b, 3 and CE without the prior, on the shapes recipe;
- ``letters``: the same on the letters recipe (``configs/builtin/retinanet_R18_letters.yaml``);
- ``letters_paper``: the same configurations for the paper-faithful letters recipe
  (``configs/builtin/retinanet_R18_letters_paper.yaml``, Section 6.10; Sections 6.3-6.8 ran
  it on ``retinanet_R18_letters_paper_6it.yaml``: no clipping), plus the CPU analogue of
  ``configs/retinanet_R50_FPN_CE_noprior_1x.yaml`` (Detectron2's warm-up, the EMA normalizer);
- ``letters_stabilized``: the attribution arm, the faithful recipe with the built-in recipe's
  stabilizers (BN in FPN and head, per-tensor clipping at 10, warm-up from 1/1000);
- ``letters_stabilizer_parts``: one stabilizer at a time (BN, clipping, warm-up);
- ``letters_paper_diagnosis``: why α-CE diverges on the faithful recipe (issue 28): α-CE α .75
  on the recipe as Section 6 ran it, with exactly one of Detectron's settings (or the paper's
  width, or a frozen backbone) changed each, no LR step, gradient norms of every iteration
  (``analysis/diagnosis.py`` reads them);
- ``ohem``, ``gamma``, ``alpha``, ``star``: Table 1d and single-parameter sweeps;
- ``longtail``: issue 38's FL / EFL x repeat-factor sampling on the long-tailed data.
"""
import json
import os
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

from ..errors import FocalDetError


class AblationError(FocalDetError, ValueError):
    """A grid, budget or run that cannot go on; the message names it."""


KEY = "MODEL.FOCAL_DET."


@dataclass(frozen=True)
class Entry:
    """One config of a grid: a name (its folder) and the cfg options that define it."""

    name: str
    loss: str
    gamma: Optional[float] = None
    alpha: Optional[float] = None
    beta: Optional[float] = None
    bias_init: str = "PriorProb"
    extra: Sequence[str] = ()
    # With ``tools/ablate.py --warmup scaled``: this entry's warm-up is this multiple of the
    # base config's, scaled to the budget (e.g. 2: Detectron2's 1,000 of 90k, not the paper's 500).
    warmup_scale: float = 1.0
    paper_ap: Optional[str] = None  # the paper's number for the same setting (R-50, COCO)
    note: str = ""

    def opts(self) -> List[str]:
        opts = [KEY + "CLS_LOSS.NAME", self.loss, KEY + "HEAD.BIAS_INIT", self.bias_init]
        for key, value in (("GAMMA", self.gamma), ("ALPHA", self.alpha), ("BETA", self.beta)):
            if value is not None:
                opts += [KEY + "CLS_LOSS." + key, repr(float(value))]
        return opts + list(self.extra)

    def describe(self) -> Dict[str, str]:
        def fmt(v):
            return "" if v is None else f"{v:g}"

        return {"loss": self.loss, "gamma": fmt(self.gamma), "alpha": fmt(self.alpha),
                "beta": fmt(self.beta), "init": self.bias_init,
                "note": self.note}


NO_CLIP = ("SOLVER.CLIP_GRADIENTS.ENABLED", "False")

# The paper's Table 1a (alpha-balanced CE), Table 1b (FL, best alpha per gamma), CE without the
# prior initialization (Section 4.1: "diverges"), and Table 3 (FL*). Paper AP: R-50-FPN, 600 px,
# COCO minival (../shared/PAPER.md).
PAPER_GRID = [
    Entry("ce_a0.25", "BalancedCrossEntropy", alpha=0.25, paper_ap="10.8"),
    Entry("ce_a0.50", "BalancedCrossEntropy", alpha=0.50, paper_ap="30.2"),
    Entry("ce_a0.75", "BalancedCrossEntropy", alpha=0.75, paper_ap="31.1"),
    Entry("fl_g0_a0.75", "FocalLoss", gamma=0, alpha=0.75, paper_ap="31.1",
          note="= CE a .75"),
    Entry("fl_g0.5_a0.50", "FocalLoss", gamma=0.5, alpha=0.50, paper_ap="32.9"),
    Entry("fl_g1_a0.25", "FocalLoss", gamma=1, alpha=0.25, paper_ap="33.7"),
    Entry("fl_g2_a0.25", "FocalLoss", gamma=2, alpha=0.25, paper_ap="34.0"),
    Entry("fl_g5_a0.25", "FocalLoss", gamma=5, alpha=0.25, paper_ap="32.2"),
    Entry("ce_noprior", "CrossEntropy", bias_init="Zero", paper_ap="diverges",
          note="recipe's grad clipping on"),
    Entry("ce_noprior_noclip", "CrossEntropy", bias_init="Zero", extra=NO_CLIP,
          paper_ap="diverges", note="no grad clipping"),
    Entry("flstar_g2_b1", "FocalLossStar", gamma=2, beta=1, alpha=0.25, paper_ap="33.8"),
    Entry("flstar_g4_b0", "FocalLossStar", gamma=4, beta=0, alpha=0.25, paper_ap="33.9"),
]
# The grid issue 17 asks for on the letters dataset: Table 1a, Table 1b (the paper's alpha per
# gamma), Table 3's two FL* settings, and CE without the prior (with the recipe's clipping).
LETTERS_GRID = [e for e in PAPER_GRID
                if e.name not in ("fl_g0_a0.75", "ce_noprior_noclip")]
# The paper's Table 1d arms (OHEM with CE on the chosen anchors; R-101 in the paper) beside
# FL gamma 2: minibatch per image, NMS threshold, and the SSD-style 1:3 ratio.
_OHEM = "MODEL.FOCAL_DET.SAMPLER."


def _ohem(batch: int, nms: float, fraction: float = -1.0, paper_ap=None) -> Entry:
    name = f"ohem{'_1to3' if fraction > 0 else ''}_{batch}_nms{nms:g}"
    return Entry(name, "CrossEntropy", paper_ap=paper_ap, note="OHEM (Table 1d)",
                 extra=(_OHEM + "NAME", "OHEM", _OHEM + "OHEM.BATCH_SIZE_PER_IMAGE", str(batch),
                        _OHEM + "OHEM.NMS_THRESH", str(nms),
                        _OHEM + "OHEM.POSITIVE_FRACTION", str(fraction)))


OHEM_GRID = [_ohem(128, 0.5, paper_ap="32.8 (R-101)"), _ohem(512, 0.5), _ohem(128, 0.7),
             _ohem(128, 0.5, 0.25), Entry("fl_g2_a0.25", "FocalLoss", gamma=2, alpha=0.25,
                                          paper_ap="36.0 (R-101)")]

GRIDS = {
    "paper": PAPER_GRID,
    "letters": LETTERS_GRID,
    "gamma": [Entry(f"fl_g{g:g}_a{a:.2f}", "FocalLoss", gamma=g, alpha=a)
              for g, a in ((0, 0.75), (0.5, 0.5), (1, 0.25), (2, 0.25), (5, 0.25))],
    "alpha": [Entry(f"ce_a{a:.2f}", "BalancedCrossEntropy", alpha=a)
              for a in (0.25, 0.5, 0.75, 0.9)],
    "ohem": OHEM_GRID,
    "star": [e for e in PAPER_GRID if e.loss == "FocalLossStar"]
    + [Entry("fl_g2_a0.25", "FocalLoss", gamma=2, alpha=0.25)],
}


# The paper's recipe on the letters data: the letters grid, CE without the prior unclipped (the
# recipe clips nothing), and the CPU analogue of the COCO config that promised NaN.
LETTERS_PAPER_GRID = [
    replace(e, note="no clipping (the paper's recipe)") if e.name == "ce_noprior" else e
    for e in LETTERS_GRID
] + [Entry("ce_noprior_d2_ema", "CrossEntropy", bias_init="Zero", warmup_scale=2.0,
           extra=(KEY + "LOSS_NORMALIZER", "ema", "SOLVER.WARMUP_FACTOR", "0.001"),
           paper_ap="diverges",
           note="as configs/retinanet_R50_FPN_CE_noprior_1x.yaml: EMA normalizer, Detectron2's "
                "warm-up (1/1000 over 1,000 of 90k)")]
# The built-in recipe's stabilizers on top of the paper's (attribution arm, issue 21).
STABILIZERS = ("MODEL.FPN.NORM", "BN", "MODEL.RETINANET.NORM", "BN",
               "SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
               "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "10.0", "SOLVER.WARMUP_FACTOR", "0.001",
               "SOLVER.WARMUP_ITERS", "100")
STABILIZED_GRID = [
    replace(e, name=e.name + "_stab", extra=tuple(e.extra) + STABILIZERS,
            note="+ BN in FPN and head, per-tensor clip 10, warm-up 1/1000 over 100")
    for e in LETTERS_PAPER_GRID
    if e.name in ("fl_g2_a0.25", "ce_a0.25", "ce_a0.50", "ce_a0.75", "ce_noprior")
]
# One stabilizer at a time, for the α-balanced CEs and FL γ 2 (added after the faithful grid's
# α-CE runs diverged, before any stabilized run): which of the three lets a run train.
PARTS = {"bn": ("MODEL.FPN.NORM", "BN", "MODEL.RETINANET.NORM", "BN"),
         "clip": ("SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
                  "norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "10.0"),
         "warmup": ("SOLVER.WARMUP_FACTOR", "0.001", "SOLVER.WARMUP_ITERS", "100")}
PARTS_NOTES = {"bn": "+ BN in FPN and head only", "clip": "+ per-tensor clip 10 only",
               "warmup": "+ warm-up 1/1000 over 100 only"}
STABILIZER_PARTS_GRID = [
    replace(e, name=f"{e.name}_{part}", extra=tuple(e.extra) + opts, note=PARTS_NOTES[part])
    for e in LETTERS_PAPER_GRID if e.name in ("fl_g2_a0.25", "ce_a0.25", "ce_a0.50", "ce_a0.75")
    for part, opts in PARTS.items()
]
GRIDS["letters_paper"] = LETTERS_PAPER_GRID
GRIDS["letters_stabilized"] = STABILIZED_GRID
GRIDS["letters_stabilizer_parts"] = STABILIZER_PARTS_GRID

# Issue 28: α-CE α .75 with the prior (the paper's best α-CE, Table 1a) on the faithful recipe
# exactly as Section 6 ran it: every setting a change touches is pinned here at the value of
# configs/builtin/retinanet_R18_letters_paper_6it.yaml (warm-up 6 iterations from 1/3,
# Detectron2's bias LR and decay, 64 channels and N(0, 0.01) head convs, FREEZE_AT 2,
# Detectron2's low-quality matches), so later edits of that config do not move the base. No LR
# step within the run; per-tensor gradient norms of every iteration (about 4 ms an iteration,
# 3% of one). Every run has the same MAX_ITER (tools/ablate.py --iters, e.g. 700: Detectron's
# 500-iteration warm-up ends within it).
DIAGNOSIS_BASE = (
    "SOLVER.WARMUP_METHOD", "linear", "SOLVER.WARMUP_FACTOR", repr(1 / 3),
    "SOLVER.WARMUP_ITERS", "6", "SOLVER.STEPS", "()",
    "SOLVER.BIAS_LR_FACTOR", "1.0", "SOLVER.WEIGHT_DECAY_BIAS", "None",
    "MODEL.FPN.OUT_CHANNELS", "64", KEY + "HEAD.WEIGHT_INIT", "fixed",
    "MODEL.BACKBONE.FREEZE_AT", "2", KEY + "LOW_QUALITY_MATCH_MIN_IOU", "0.0",
    KEY + "GRAD_STATS_ITERS", "1000000",
)
# (name suffix, the one change, note); "base" changes nothing.
DIAGNOSIS_CHANGES = (
    ("base", (), "the faithful recipe of Section 6 (6-iteration warm-up)"),
    ("warmup500", ("SOLVER.WARMUP_ITERS", "500"),
     "(a) Detectron's warm-up: 500 iterations from 1/3"),
    ("bias2x", ("SOLVER.BIAS_LR_FACTOR", "2.0", "SOLVER.WEIGHT_DECAY_BIAS", "0.0"),
     "(b) Detectron's biases: 2x LR, no weight decay"),
    ("width256", ("MODEL.FPN.OUT_CHANNELS", "256"),
     "(c) the paper's width: 256 channels in FPN and head"),
    ("init_wp", (KEY + "HEAD.WEIGHT_INIT", "width_preserving"),
     "(d) width-preserving head init at 64 channels (a departure)"),
    ("freeze5", ("MODEL.BACKBONE.FREEZE_AT", "5"), "(e) the backbone frozen (FREEZE_AT 5)"),
    ("lowq04", (KEY + "LOW_QUALITY_MATCH_MIN_IOU", "0.4"),
     "(f) Detectron's low-quality matches: best anchor positive only at IoU >= 0.4"),
)
DIAGNOSIS_GRID = [
    Entry(f"ce_a0.75_{suffix}", "BalancedCrossEntropy", alpha=0.75, paper_ap="31.1",
          extra=DIAGNOSIS_BASE + change, note=note)
    for suffix, change, note in DIAGNOSIS_CHANGES
]
GRIDS["letters_paper_diagnosis"] = DIAGNOSIS_GRID

# Issue 28, after the corrected recipe (Section 6.10) still sent α-CE α .75 to NaN: the
# departures the config header still states, one at a time, on the corrected config itself
# (configs/builtin/retinanet_R18_letters_paper.yaml), no LR step, every iteration's gradient
# norms; short runs (tools/ablate.py --iters 500: the warm-up ends with the run), each change
# against the same base.
_IMAGE_256 = ("INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "256",
              "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "256")
_ANCHORS_4X = ("MODEL.ANCHOR_GENERATOR.SIZES",
               str([[round(4 * s * 2 ** (i / 3), 3) for i in range(3)]
                    for s in (8, 16, 32, 64, 128)]))
CANDIDATE_CHANGES = (
    ("base", (), "the corrected recipe (Section 6.10)"),
    ("image256", _IMAGE_256,
     "(g) images 256 px (objects 24-72 px, 4x the positions), anchors still 2x the stride"),
    ("image256_anchors4x", _IMAGE_256 + _ANCHORS_4X,
     "(h) images 256 px with Detectron's anchors, 4x the stride (32-813 px): the paper's "
     "anchor-to-stride ratio, the same anchor-to-object ratio as the base"),
    ("batch16", ("SOLVER.IMS_PER_BATCH", "16", "SOLVER.BASE_LR", "0.01"),
     "(i) the paper's batch, 16 images at LR 0.01"),
)
CANDIDATE_GRID = [
    Entry(f"ce_a0.75_{suffix}", "BalancedCrossEntropy", alpha=0.75, paper_ap="31.1",
          extra=("SOLVER.STEPS", "()", KEY + "GRAD_STATS_ITERS", "1000000") + change,
          note=note)
    for suffix, change, note in CANDIDATE_CHANGES
]
GRIDS["letters_paper_candidates"] = CANDIDATE_GRID
# Added after the grid's α-CE runs and (g)-(i) all went NaN by iteration 22, before these ran:
# is the divergence ours? The same α-CE α .75 run with our speed switches off (NCHW, no norm
# folding), through the focal loss's code (γ 0), and on Detectron2's own RetinaNet (its loss,
# head and matching; its EMA normalizer, which Detectron2 has instead of num_fg).
CHECK_GRID = [
    replace(CANDIDATE_GRID[0], name="ce_a0.75_nchw_unfolded",
            extra=CANDIDATE_GRID[0].extra + (KEY + "CHANNELS_LAST", "False",
                                             KEY + "FOLD_NORMS", "False"),
            note="our speed switches off: NCHW, FrozenBN not folded"),
    Entry("fl_g0_a0.75", "FocalLoss", gamma=0, alpha=0.75, paper_ap="31.1",
          extra=CANDIDATE_GRID[0].extra, note="α-CE through the focal loss's code (γ 0)"),
    replace(CANDIDATE_GRID[0], name="d2_retinanet_ce_a0.75",
            extra=CANDIDATE_GRID[0].extra + (
                "MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
                "0.0", "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.75"),
            note="Detectron2's RetinaNet (its loss, head, matching, EMA normalizer)"),
]
GRIDS["letters_paper_checks"] = CHECK_GRID

# Issue 38 (docs/REPRODUCTION.md, Section 8): FL and EFL (s 4) on the long-tailed built-in data
# (configs/builtin/retinanet_R18_longtail.yaml), each with and without repeat-factor sampling
# at t 0.044 (100 / the 2,278 non-empty training images: a class in 100 images is not repeated,
# one in a single image 10 times, as LVIS v1's 0.001). Same recipe otherwise.
LONGTAIL_RFS = ("DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
                "DATALOADER.REPEAT_THRESHOLD", "0.044")
_EFL_S4 = (KEY + "CLS_LOSS.EFL_SCALE", "4.0")
GRIDS["longtail"] = [
    Entry("fl", "FocalLoss", gamma=2, alpha=0.25, note="FL"),
    Entry("fl_rfs", "FocalLoss", gamma=2, alpha=0.25, extra=LONGTAIL_RFS,
          note="FL + repeat-factor sampling"),
    Entry("efl_s4", "EqualizedFocalLoss", gamma=2, alpha=0.25, extra=_EFL_S4, note="EFL s 4"),
    Entry("efl_s4_rfs", "EqualizedFocalLoss", gamma=2, alpha=0.25, extra=_EFL_S4 + LONGTAIL_RFS,
          note="EFL s 4 + repeat-factor sampling"),
]


def load_grid(spec: str) -> List[Entry]:
    """A built-in grid name, or a JSON file: a list of {"name", "loss", "gamma", "alpha",
    "beta", "bias_init", "extra": [cfg opts...], "paper_ap", "note"}."""
    if spec in GRIDS:
        return list(GRIDS[spec])
    if not os.path.isfile(spec):
        raise AblationError(f"--grid {spec!r}: not a built-in grid ({sorted(GRIDS)}) "
                         "and not a JSON file")
    with open(spec) as f:
        rows = json.load(f)
    entries = []
    for i, row in enumerate(rows):
        try:
            entries.append(Entry(**{**row, "extra": tuple(row.get("extra", ()))}))
        except TypeError as e:
            raise AblationError(f"--grid {spec}: entry {i} ({row}) is invalid: {e}") from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise AblationError(f"--grid {spec}: run names must be unique, got {names}")
    return entries
