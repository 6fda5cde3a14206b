"""The classification-loss registry: each entry knows its loss, its probabilities and its prior.

A registered loss is a class whose ``__init__`` is ``@configurable`` (buildable from a cfg or
from explicit keywords) and which provides:

- ``__call__(logits, labels) -> Tensor``: the loss *summed* over all non-ignored anchors.
  ``logits`` (R, K) (or (N, R, K)); ``labels`` (R,) (or (N, R)) int64 with values in [0, K):
  the anchor's class, K: background, -1: ignored. Computed without a one-hot target.
  ``FocalRetinaNet`` calls it once per FPN level (with that level's anchors) and adds the
  results, so it must be a plain sum over anchors (no normalization of its own).
- ``loss(logits, targets, reduction)``: the same loss with float targets of logits' shape.
- ``probs(logits)``: the foreground probability consistent with the loss (used at inference).
- ``prior_bias(pi)``: the logit bias b with ``probs(b) == pi`` (used to initialize the head).

Register your own with ``@CLS_LOSS_REGISTRY.register()`` and select it with
``MODEL.FOCAL_DET.CLS_LOSS.NAME``.
"""
import math

import torch
from detectron2.config import CfgNode, configurable
from fvcore.common.registry import Registry
from torch import Tensor

from . import functional as LF

CLS_LOSS_REGISTRY = Registry("FOCAL_DET_CLS_LOSS")
CLS_LOSS_REGISTRY.__doc__ = """
Registry for focal_det's classification losses (MODEL.FOCAL_DET.CLS_LOSS.NAME).
The registered object is called with a cfg and returns a loss object (see focal_det.losses).
"""

_KEY = "MODEL.FOCAL_DET.CLS_LOSS"


def registered_loss_names():
    return sorted(name for name, _ in CLS_LOSS_REGISTRY)


def build_cls_loss(cfg: CfgNode):
    """Build the classification loss named by ``cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME``."""
    name = cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME
    if name not in CLS_LOSS_REGISTRY:
        raise ValueError(
            f"{_KEY}.NAME={name!r} is not a registered classification loss; "
            f"registered: {registered_loss_names()}"
        )
    return CLS_LOSS_REGISTRY.get(name)(cfg)


def check_prior(prior: float, key: str = "MODEL.FOCAL_DET.HEAD.PRIOR_PROB") -> None:
    if not 0.0 < prior < 1.0:
        raise ValueError(f"{key}={prior!r} is outside the allowed range (0, 1)")


def _keyed(fn, *args, **kwargs):
    # Re-raise parameter errors with the config key they come from.
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise ValueError(f"{_KEY}: {e}") from None


class SigmoidClassificationLoss:
    """Base class: a per-element kernel applied to labels or targets. Subclasses set it."""

    def kernel(self) -> LF.Kernel:
        raise NotImplementedError

    def label_kernel(self) -> LF.Kernel:
        """Kernel for the label path, where targets are exactly 0/1 (defaults to ``kernel``)."""
        return self.kernel()

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        num_classes = logits.shape[-1]
        x2d = logits.reshape(-1, num_classes)
        labels = labels.reshape(-1)
        if labels.numel() != x2d.shape[0]:
            raise ValueError(
                f"labels has {labels.numel()} entries for {x2d.shape[0]} rows of logits"
            )
        cdtype = LF.compute_dtype(logits.dtype)
        classes = torch.arange(num_classes, device=logits.device)

        def targets_of(start: int, end: int):
            lab = labels[start:end, None]
            return lab == classes, (lab >= 0).to(cdtype)  # bool targets, row weights

        return LF._FusedLoss.apply(logits, targets_of, self.label_kernel(), "sum", x2d.shape)

    def loss(self, logits: Tensor, targets: Tensor, reduction: str = "sum") -> Tensor:
        return LF.apply_loss(logits, targets, self.kernel(), reduction)

    def probs(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def prior_bias(self, prior: float) -> float:
        check_prior(prior)
        return -math.log((1.0 - prior) / prior)


@CLS_LOSS_REGISTRY.register()
class FocalLoss(SigmoidClassificationLoss):
    """FL = -alpha_t (1 - p_t)^gamma log(p_t); probabilities sigmoid(x)."""

    @configurable
    def __init__(self, *, gamma: float = 2.0, alpha: float = 0.25):
        _keyed(LF.check_focal_params, gamma, alpha)
        self.gamma, self.alpha = float(gamma), float(alpha)

    @classmethod
    def from_config(cls, cfg):
        return {"gamma": cfg.MODEL.FOCAL_DET.CLS_LOSS.GAMMA,
                "alpha": cfg.MODEL.FOCAL_DET.CLS_LOSS.ALPHA}

    def kernel(self):
        return LF.focal_loss_kernel(self.gamma, self.alpha)

    def label_kernel(self):
        return LF.binary_focal_kernel(self.gamma, self.alpha)

    def __repr__(self):
        return f"{type(self).__name__}(gamma={self.gamma}, alpha={self.alpha})"


@CLS_LOSS_REGISTRY.register()
class CrossEntropy(FocalLoss):
    """CE = -log(p_t): FL with gamma = 0 and no alpha weighting (ignores GAMMA and ALPHA)."""

    @configurable
    def __init__(self):
        super().__init__(gamma=0.0, alpha=-1.0)

    @classmethod
    def from_config(cls, cfg):
        return {}


@CLS_LOSS_REGISTRY.register()
class BalancedCrossEntropy(FocalLoss):
    """Alpha-balanced CE = -alpha_t log(p_t): FL with gamma = 0 (ignores GAMMA)."""

    @configurable
    def __init__(self, *, alpha: float = 0.25):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"{_KEY}.ALPHA={alpha!r}: BalancedCrossEntropy needs alpha in [0, 1]"
            )
        super().__init__(gamma=0.0, alpha=alpha)

    @classmethod
    def from_config(cls, cfg):
        return {"alpha": cfg.MODEL.FOCAL_DET.CLS_LOSS.ALPHA}


@CLS_LOSS_REGISTRY.register()
class FocalLossStar(SigmoidClassificationLoss):
    """FL* = -log(sigmoid(gamma x_t + beta)) / gamma; probabilities sigmoid(gamma x + beta)."""

    @configurable
    def __init__(self, *, gamma: float = 2.0, beta: float = 1.0, alpha: float = 0.25):
        _keyed(LF.check_focal_params, gamma, alpha, star=True, beta=beta)
        self.gamma, self.beta, self.alpha = float(gamma), float(beta), float(alpha)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FOCAL_DET.CLS_LOSS
        return {"gamma": c.GAMMA, "beta": c.BETA, "alpha": c.ALPHA}

    def kernel(self):
        return LF.focal_star_kernel(self.gamma, self.beta, self.alpha)

    def probs(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits * self.gamma + self.beta)

    def prior_bias(self, prior: float) -> float:
        check_prior(prior)
        return (math.log(prior / (1.0 - prior)) - self.beta) / self.gamma

    def __repr__(self):
        return f"FocalLossStar(gamma={self.gamma}, beta={self.beta}, alpha={self.alpha})"
