"""Bias initialization of the last classification conv, as a named registry.

A registered initializer is ``fn(cls_loss, prior_prob, num_classes) -> Tensor``: the biases of
one anchor's ``cls_loss.num_logits(num_classes)`` logits. ``PriorProb`` (the paper): every anchor
starts with foreground probability pi (``MODEL.FOCAL_DET.HEAD.PRIOR_PROB``), through the loss's
own ``prior_bias`` (FL/CE: b = -log((1 - pi) / pi) for each class; FL*: b = (logit(pi) - beta) /
gamma; softmax FL: Detectron's background bias log(K (1 - pi) / pi), classes 0). ``Zero``: all
biases 0, the paper's no-prior baseline. ``FocalRetinaNet.__init__`` applies it, so a model built
from keywords (or a LazyConfig) and one built from a cfg start from the same bias.
"""
import torch
from fvcore.common.registry import Registry
from torch import Tensor

from .losses.base import ClassificationLoss
from .losses.registry import check_prior

BIAS_INIT_REGISTRY = Registry("FOCAL_DET_BIAS_INIT")
BIAS_INIT_REGISTRY.__doc__ = ("Registry for MODEL.FOCAL_DET.HEAD.BIAS_INIT: "
                              "fn(cls_loss, prior_prob, num_classes) -> (num_logits,) Tensor.")


@BIAS_INIT_REGISTRY.register()
def PriorProb(cls_loss: ClassificationLoss, prior_prob: float, num_classes: int) -> Tensor:
    check_prior(prior_prob)
    return cls_loss.prior_bias(prior_prob, num_classes)


@BIAS_INIT_REGISTRY.register()
def Zero(cls_loss: ClassificationLoss, prior_prob: float, num_classes: int) -> Tensor:
    return torch.zeros(cls_loss.num_logits(num_classes), dtype=torch.float64)


def class_bias(name: str, cls_loss: ClassificationLoss, prior_prob: float,
               num_classes: int) -> Tensor:
    """The initial biases of one anchor's logits, a (num_logits,) tensor, from the initializer
    registered as ``name``."""
    if name not in BIAS_INIT_REGISTRY:
        names = sorted(n for n, _ in BIAS_INIT_REGISTRY)
        raise ValueError(
            f"MODEL.FOCAL_DET.HEAD.BIAS_INIT={name!r} is not a registered bias initializer; "
            f"registered: {names}"
        )
    bias = BIAS_INIT_REGISTRY.get(name)(cls_loss, prior_prob, num_classes)
    expected = (cls_loss.num_logits(num_classes),)
    if tuple(bias.shape) != expected:
        raise ValueError(f"bias initializer {name!r} gave biases of shape {tuple(bias.shape)} "
                         f"for {type(cls_loss).__name__}, which has {expected[0]} logits per "
                         "anchor")
    return bias
