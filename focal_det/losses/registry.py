"""The classification-loss registry and the sigmoid loss family (FL, FL*, CE, balanced CE).

Every registered loss derives from :class:`focal_det.losses.base.ClassificationLoss`, whose
docstring is the contract (``__call__``, ``per_anchor``, ``loss``, ``probs``, ``prior_bias``,
``num_logits``, ...), and has a ``@configurable`` ``__init__`` (buildable from a cfg or from
explicit keywords). Register your own with ``@CLS_LOSS_REGISTRY.register()`` and select it with
``MODEL.FOCAL_DET.CLS_LOSS.NAME``; a sigmoid loss derives from
:class:`SigmoidClassificationLoss` and only says what it computes (``spec()`` or ``kernel()``).
"""
import math
from typing import Optional, Tuple

import torch
from detectron2.config import CfgNode, configurable
from fvcore.common.registry import Registry
from torch import Tensor

from ..kernels import LossSpec, fused_loss
from ..kernels.reference import Kernel, kernel_for
from . import functional as LF
from .base import ClassificationLoss, require_loss

CLS_LOSS_REGISTRY = Registry("FOCAL_DET_CLS_LOSS")
CLS_LOSS_REGISTRY.__doc__ = """
Registry for focal_det's classification losses (MODEL.FOCAL_DET.CLS_LOSS.NAME).
The registered class is called with a cfg and returns a ClassificationLoss
(focal_det.losses.base).
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
    return require_loss(CLS_LOSS_REGISTRY.get(name)(cfg))


def check_prior(prior: float, key: str = "MODEL.FOCAL_DET.HEAD.PRIOR_PROB") -> None:
    if not 0.0 < prior < 1.0:
        raise ValueError(f"{key}={prior!r} is outside the allowed range (0, 1)")


def _keyed(fn, *args, **kwargs):
    # Re-raise parameter errors with the config key they come from.
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise ValueError(f"{_KEY}: {e}") from None


def split_alpha(alpha) -> Tuple[float, Optional[Tensor]]:
    """(scalar alpha, per-class alphas or None) from one value or K values (list, tuple,
    tensor). Per-class values must each be in [0, 1]."""
    if isinstance(alpha, (list, tuple, Tensor)):
        values = torch.as_tensor(alpha, dtype=torch.float64).flatten()
        if values.numel() == 0:
            raise ValueError(f"{_KEY}.ALPHA_PER_CLASS: give one value per class, not an empty list")
        bad = values[(values < 0) | (values > 1) | values.isnan()]
        if bad.numel():
            raise ValueError(f"{_KEY}.ALPHA_PER_CLASS={values.tolist()!r}: every value must be "
                             f"in [0, 1] (got {bad[0].item()!r})")
        return -1.0, values
    return float(alpha), None


def config_alpha(cfg: CfgNode):
    """``CLS_LOSS.ALPHA_PER_CLASS`` (K values) when given, else ``CLS_LOSS.ALPHA``."""
    c = cfg.MODEL.FOCAL_DET.CLS_LOSS
    per_class = list(c.get("ALPHA_PER_CLASS", []))
    return per_class if per_class else c.ALPHA


def check_labels(logits: Tensor, labels: Tensor) -> None:
    """One label per row of logits (..., C)."""
    rows = logits.numel() // max(logits.shape[-1], 1)
    if labels.numel() != rows:
        raise ValueError(f"labels has {labels.numel()} entries for {rows} rows of logits")


class SigmoidClassificationLoss(ClassificationLoss):
    """Base class of the sigmoid loss family: K logits per anchor, ``probs`` = sigmoid.

    Subclasses return their :class:`focal_det.kernels.LossSpec` from ``spec()`` (computed by the
    fused kernels), or override ``kernel()`` with a plain-PyTorch per-element kernel
    (``focal_det.kernels.reference.Kernel``), which then runs chunk by chunk. A subclass that
    changes ``probs`` changes ``prior_logit`` to match (and ``probs_affine`` where it can)."""

    def spec(self) -> Optional[LossSpec]:
        return None

    def kernel(self) -> Kernel:
        spec = self.spec()
        if spec is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither spec() nor kernel()")
        return kernel_for(spec)

    def _spec_or_kernel(self):
        spec = self.spec()
        return spec if spec is not None else self.kernel()

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        check_labels(logits, labels)
        return fused_loss(logits, self._spec_or_kernel(), "sum", labels=labels)

    @torch.no_grad()
    def per_anchor(self, logits: Tensor, labels: Tensor) -> Tensor:
        per = fused_loss(logits.detach(), self._spec_or_kernel(), "none", labels=labels)
        return per.sum(-1)

    def loss(self, logits: Tensor, targets: Tensor, reduction: str = "sum") -> Tensor:
        """With float ``targets`` (..., K); "none" gives (..., K), one term per logit."""
        return LF.apply_loss(logits, targets, self._spec_or_kernel(), reduction)

    def probs(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def probs_affine(self) -> Optional[Tuple[float, float]]:
        """(1, 0) for plain sigmoid probabilities; a subclass that overrides ``probs`` gets
        None unless it overrides this too."""
        if type(self).probs is SigmoidClassificationLoss.probs:
            return 1.0, 0.0
        return None

    def prior_logit(self, prior: float) -> float:
        """The logit b with ``probs(b) == prior``."""
        check_prior(prior)
        return -math.log((1.0 - prior) / prior)

    def prior_bias(self, prior_prob: float, num_classes: int) -> Tensor:
        """``prior_logit(prior_prob)`` for each of the K logits (float64)."""
        return torch.full((num_classes,), self.prior_logit(prior_prob), dtype=torch.float64)


class _AlphaMixin:
    """alpha as one value (``self.alpha``) or K values (``self.class_alpha``, (K,) float64)."""

    class_alpha: Optional[Tensor] = None

    def _set_alpha(self, alpha, **check):
        scalar, per_class = split_alpha(alpha)
        _keyed(LF.check_focal_params, self.gamma, scalar if per_class is None else 0.5, **check)
        self.alpha, self.class_alpha = scalar, per_class

    def _alpha_repr(self):
        return self.alpha if self.class_alpha is None else self.class_alpha.tolist()

    def check_num_classes(self, num_classes: int) -> None:
        """A per-class alpha has one value per class of the model."""
        if self.class_alpha is not None and self.class_alpha.numel() != num_classes:
            raise ValueError(f"{_KEY}.ALPHA_PER_CLASS has {self.class_alpha.numel()} values, but "
                             f"the model has K = {num_classes} classes "
                             "(MODEL.RETINANET.NUM_CLASSES): give one alpha per class")


@CLS_LOSS_REGISTRY.register()
class FocalLoss(_AlphaMixin, SigmoidClassificationLoss):
    """FL = -alpha_t (1 - p_t)^gamma log(p_t); probabilities sigmoid(x). ``alpha``: one value,
    or K values (positives of class k weigh alpha[k], its negatives 1 - alpha[k])."""

    @configurable
    def __init__(self, *, gamma: float = 2.0, alpha=0.25):
        self.gamma = float(gamma)
        self._set_alpha(alpha)

    @classmethod
    def from_config(cls, cfg):
        return {"gamma": cfg.MODEL.FOCAL_DET.CLS_LOSS.GAMMA, "alpha": config_alpha(cfg)}

    def spec(self):
        return LossSpec(False, self.gamma, self.alpha, class_alpha=self.class_alpha)

    def __repr__(self):
        return f"{type(self).__name__}(gamma={self.gamma}, alpha={self._alpha_repr()})"


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
    def __init__(self, *, alpha=0.25):
        if split_alpha(alpha)[1] is None and not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"{_KEY}.ALPHA={alpha!r}: BalancedCrossEntropy needs alpha in [0, 1]"
            )
        super().__init__(gamma=0.0, alpha=alpha)

    @classmethod
    def from_config(cls, cfg):
        return {"alpha": config_alpha(cfg)}


@CLS_LOSS_REGISTRY.register()
class FocalLossStar(_AlphaMixin, SigmoidClassificationLoss):
    """FL* = -log(sigmoid(gamma x_t + beta)) / gamma; probabilities sigmoid(gamma x + beta)."""

    @configurable
    def __init__(self, *, gamma: float = 2.0, beta: float = 1.0, alpha=0.25):
        self.gamma, self.beta = float(gamma), float(beta)
        self._set_alpha(alpha, star=True, beta=beta)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FOCAL_DET.CLS_LOSS
        return {"gamma": c.GAMMA, "beta": c.BETA, "alpha": config_alpha(cfg)}

    def spec(self):
        return LossSpec(True, self.gamma, self.alpha, self.beta, self.class_alpha)

    def probs(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits * self.gamma + self.beta)

    def probs_affine(self):
        return self.gamma, self.beta

    def prior_logit(self, prior: float) -> float:
        check_prior(prior)
        return (math.log(prior / (1.0 - prior)) - self.beta) / self.gamma

    def __repr__(self):
        return (f"FocalLossStar(gamma={self.gamma}, beta={self.beta}, "
                f"alpha={self._alpha_repr()})")
