"""focal_det's config keys, under ``cfg.MODEL.FOCAL_DET`` (and ``SOLVER.AMP.PRECISION`` beside
Detectron2's ``SOLVER.AMP.ENABLED``), and their validation.

``add_focal_det_config`` only *adds* keys to the cfg it is given; it never touches Detectron2's
global defaults, so ``detectron2.config.get_cfg()`` is the same with or without focal_det.
"""
from typing import Iterable, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as _d2_get_cfg

# Detectron2 RetinaNet keys that focal_det configures elsewhere, with Detectron2's defaults and
# the focal_det key that replaces each (one source of truth per knob).
SUPERSEDED_RETINANET_KEYS = {
    "FOCAL_LOSS_GAMMA": (2.0, "MODEL.FOCAL_DET.CLS_LOSS.GAMMA"),
    "FOCAL_LOSS_ALPHA": (0.25, "MODEL.FOCAL_DET.CLS_LOSS.ALPHA"),
    "PRIOR_PROB": (0.01, "MODEL.FOCAL_DET.HEAD.PRIOR_PROB"),
}

LOSS_NORMALIZERS = ("num_fg", "ema", "constant")


def add_focal_det_config(cfg: CN) -> CN:
    """Add focal_det's keys (under ``MODEL.FOCAL_DET``) to ``cfg`` in place; returns ``cfg``."""
    _C = cfg
    _C.MODEL.FOCAL_DET = CN()
    # Classification loss: the single place it is configured (see focal_det.losses).
    _C.MODEL.FOCAL_DET.CLS_LOSS = CN()
    # Registered name (CLS_LOSS_REGISTRY): FocalLoss, FocalLossStar, CrossEntropy,
    # BalancedCrossEntropy, SoftmaxFocalLoss (K + 1 logits), EqualizedFocalLoss (long-tailed
    # data, focal_det.losses.efl), or your own.
    _C.MODEL.FOCAL_DET.CLS_LOSS.NAME = "FocalLoss"
    # Focusing parameter gamma (FL: >= 0; FL*: > 0, the steepness; EFL: gamma_b, > 0). Ignored
    # by the CE losses.
    _C.MODEL.FOCAL_DET.CLS_LOSS.GAMMA = 2.0
    # Weight of positives, alpha in [0, 1]; negatives get 1 - alpha. Negative: no weighting.
    _C.MODEL.FOCAL_DET.CLS_LOSS.ALPHA = 0.25
    # Alpha per class: K values in [0, 1] (positives of class k weigh ALPHA_PER_CLASS[k], its
    # negatives 1 - ALPHA_PER_CLASS[k], as mmcv's per-class weight); empty: ALPHA for all.
    # A separate key because a yacs key keeps its type (ALPHA is one float).
    _C.MODEL.FOCAL_DET.CLS_LOSS.ALPHA_PER_CLASS = []
    # FL* shift beta (paper, Appendix A): p*_t = sigmoid(gamma * x_t + beta). Used by FL* only.
    _C.MODEL.FOCAL_DET.CLS_LOSS.BETA = 1.0
    # EFL's s >= 0: class j's focusing parameter is GAMMA + EFL_SCALE * (1 - g_j), g_j its
    # accumulated positive-to-negative gradient ratio (official: 8; 4 for small models; 0 = FL).
    # Used by EqualizedFocalLoss only.
    _C.MODEL.FOCAL_DET.CLS_LOSS.EFL_SCALE = 8.0

    _C.MODEL.FOCAL_DET.HEAD = CN()
    # Registered bias initializer of the last class conv: PriorProb (paper) or Zero (baseline).
    _C.MODEL.FOCAL_DET.HEAD.BIAS_INIT = "PriorProb"
    # Foreground probability pi every anchor starts with under PriorProb; in (0, 1).
    _C.MODEL.FOCAL_DET.HEAD.PRIOR_PROB = 0.01
    # Head conv weights: "fixed" = N(0, 0.01) whatever the width (Detectron, Detectron2);
    # "width_preserving" = std 0.01 * sqrt(256 / C), each conv's gain as at 256 channels (a
    # departure from the paper at other widths; focal_det.modeling.head_init).
    _C.MODEL.FOCAL_DET.HEAD.WEIGHT_INIT = "fixed"

    # Classification-loss normalizer: "num_fg" = foreground anchors in the batch, summed over
    # all workers (the paper); "ema" = Detectron2's moving average (momentum 0.9, start 100);
    # "constant" = LOSS_NORMALIZER_VALUE, a fixed foreground count of the whole batch (a
    # diagnosis: docs/REPRODUCTION.md Section 7).
    _C.MODEL.FOCAL_DET.LOSS_NORMALIZER = "num_fg"
    _C.MODEL.FOCAL_DET.LOSS_NORMALIZER_VALUE = 0.0
    # Which anchors the classification loss trains on (focal_det.modeling.sampling): "" = all
    # of them (the paper's FL), "OHEM" = the paper's Table 1d baseline.
    _C.MODEL.FOCAL_DET.SAMPLER = CN()
    _C.MODEL.FOCAL_DET.SAMPLER.NAME = ""
    _C.MODEL.FOCAL_DET.SAMPLER.OHEM = CN()
    # Minibatch per image: the highest-loss anchors that survive NMS (paper: 128, 256, 512).
    _C.MODEL.FOCAL_DET.SAMPLER.OHEM.BATCH_SIZE_PER_IMAGE = 128
    # NMS over the anchors' boxes (paper: .5, .7).
    _C.MODEL.FOCAL_DET.SAMPLER.OHEM.NMS_THRESH = 0.5
    # Largest foreground share of the minibatch; 0.25 is "OHEM 1:3"; <= 0: no ratio.
    _C.MODEL.FOCAL_DET.SAMPLER.OHEM.POSITIVE_FRACTION = -1.0
    # Highest-loss anchors per image that enter the NMS (exact while BATCH_SIZE survive).
    _C.MODEL.FOCAL_DET.SAMPLER.OHEM.PRE_NMS_TOPK = 4096
    # Score foreground anchors by classification + box loss (Fast R-CNN's OHEM); False: cls only.
    _C.MODEL.FOCAL_DET.SAMPLER.OHEM.BOX_LOSS = True
    # Crowd regions (COCO iscrowd: 1), opt-in: background anchors whose intersection with a
    # crowd box covers at least IOA_THRESH of the anchor's area are ignored (focal_det.modeling.crowd).
    _C.MODEL.FOCAL_DET.CROWD = CN()
    _C.MODEL.FOCAL_DET.CROWD.ENABLED = False
    _C.MODEL.FOCAL_DET.CROWD.IOA_THRESH = 0.5
    # Images with more GT boxes than this match anchors in chunks of this many (bounds memory).
    _C.MODEL.FOCAL_DET.MATCHER_CHUNK = 256
    # A GT box's best anchor (Detectron2's low-quality match) is positive only if its IoU is at
    # least this: 0.0 = at any IoU (Detectron2), 0.4 = Detectron's rule (the paper's code;
    # focal_det.modeling.matching). Only with MODEL.RETINANET's low-quality matches on.
    _C.MODEL.FOCAL_DET.LOW_QUALITY_MATCH_MIN_IOU = 0.0
    # Diagnostics: log per-tensor gradient norms (before clipping) and how many tensors the
    # clipping cuts, for the first N iterations, to OUTPUT_DIR/grad_stats.jsonl; 0: off.
    _C.MODEL.FOCAL_DET.GRAD_STATS_ITERS = 0
    # Speed switches (benchmarks/bench_model.py measures them; outputs match either way).
    # Fold FrozenBN (train and test) and BN (test) into the preceding conv, parameters unchanged.
    _C.MODEL.FOCAL_DET.FOLD_NORMS = True
    # Channels-last weights and inputs (faster and leaner on CPU in benchmarks/bench_model.py).
    _C.MODEL.FOCAL_DET.CHANNELS_LAST = True
    # Inference under autocast (focal_det.precision): "float32" (none), "bfloat16", "float16"
    # or "auto" (float16 on CUDA, bfloat16 on CPU). Scores, box decoding and NMS stay float32.
    _C.MODEL.FOCAL_DET.INFERENCE_PRECISION = "float32"
    # Mixed-precision training with SOLVER.AMP.ENABLED (focal_det.engine.amp): the autocast
    # dtype, named as Detectron2 main's AMPTrainer(precision=...): "auto" (float16 with a
    # gradient scaler on CUDA, as Detectron2; bfloat16 on CPU), "bfloat16" or "float16".
    _C.SOLVER.AMP.PRECISION = "auto"
    return cfg


def get_cfg() -> CN:
    """Detectron2's default cfg with focal_det's keys added (a fresh copy each call)."""
    return add_focal_det_config(_d2_get_cfg())


def check_choice(key: str, value: str, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of the allowed values {allowed}")


def check_range(
    key: str, value: float, low: float, high: float, *, low_open=False, high_open=False
) -> None:
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{key}={value!r} is outside the allowed range {interval}")


def check_superseded_retinanet_keys(cfg: CN) -> None:
    """Refuse Detectron2 RetinaNet keys that focal_det reads from MODEL.FOCAL_DET instead."""
    for key, (default, replacement) in SUPERSEDED_RETINANET_KEYS.items():
        value = cfg.MODEL.RETINANET.get(key, default)
        if abs(float(value) - default) > 1e-12:
            raise ValueError(
                f"MODEL.RETINANET.{key}={value!r} is not read by FocalRetinaNet; "
                f"set {replacement} instead (and leave MODEL.RETINANET.{key} at {default})."
            )


def check_iou_thresholds(key: str, thresholds: Sequence[float], labels: Sequence[int]) -> None:
    thresholds = list(thresholds)
    if thresholds != sorted(thresholds) or any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(
            f"{key}={thresholds!r} must be increasing IoU values in [0, 1], e.g. [0.4, 0.5]"
        )
    if len(labels) != len(thresholds) + 1:
        raise ValueError(
            f"{key}={thresholds!r} needs {len(thresholds) + 1} entries in "
            f"MODEL.RETINANET.IOU_LABELS, got {list(labels)!r}"
        )


def check_num_classes(cfg: CN) -> None:
    """MODEL.RETINANET.NUM_CLASSES must equal the class count of every training dataset."""
    from detectron2.data import MetadataCatalog

    for name in cfg.DATASETS.TRAIN:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != cfg.MODEL.RETINANET.NUM_CLASSES:
            raise ValueError(
                f"MODEL.RETINANET.NUM_CLASSES={cfg.MODEL.RETINANET.NUM_CLASSES} but the training "
                f"dataset {name!r} has {len(classes)} classes {list(classes)[:10]}; "
                f"set MODEL.RETINANET.NUM_CLASSES {len(classes)}"
            )


def validate_retinanet_config(cfg) -> None:
    """Raise ValueError naming the key, value and what is allowed, for inconsistent configs."""
    check_superseded_retinanet_keys(cfg)
    r = cfg.MODEL.RETINANET
    check_choice("MODEL.FOCAL_DET.LOSS_NORMALIZER", cfg.MODEL.FOCAL_DET.LOSS_NORMALIZER,
                 LOSS_NORMALIZERS)
    if (cfg.MODEL.FOCAL_DET.LOSS_NORMALIZER == "constant"
            and not cfg.MODEL.FOCAL_DET.LOSS_NORMALIZER_VALUE > 0):
        raise ValueError("MODEL.FOCAL_DET.LOSS_NORMALIZER constant needs "
                         "MODEL.FOCAL_DET.LOSS_NORMALIZER_VALUE > 0, got "
                         f"{cfg.MODEL.FOCAL_DET.LOSS_NORMALIZER_VALUE!r}")
    check_iou_thresholds("MODEL.RETINANET.IOU_THRESHOLDS", r.IOU_THRESHOLDS, r.IOU_LABELS)
    check_range("MODEL.RETINANET.SCORE_THRESH_TEST", r.SCORE_THRESH_TEST, 0.0, 1.0)
    check_range("MODEL.RETINANET.NMS_THRESH_TEST", r.NMS_THRESH_TEST, 0.0, 1.0)
    if r.NUM_CLASSES < 1:
        raise ValueError(f"MODEL.RETINANET.NUM_CLASSES={r.NUM_CLASSES!r} must be >= 1")
    levels = len(r.IN_FEATURES)
    for key in ("SIZES", "ASPECT_RATIOS"):
        value = cfg.MODEL.ANCHOR_GENERATOR[key]
        if len(value) not in (1, levels):
            raise ValueError(
                f"MODEL.ANCHOR_GENERATOR.{key}={list(value)!r} has {len(value)} entries, but "
                f"MODEL.RETINANET.IN_FEATURES={list(r.IN_FEATURES)!r} has {levels} levels; "
                f"give one list per level (or a single list for all levels)"
            )
