"""Bias initialization of the last classification conv, as a named registry.

``PriorProb`` (the paper): every anchor starts with foreground probability pi
(``MODEL.FOCAL_DET.HEAD.PRIOR_PROB``), through the loss's own ``prior_bias`` so that FL* gets
b = (logit(pi) - beta) / gamma and FL/CE get b = -log((1 - pi) / pi). ``Zero``: b = 0, the
paper's no-prior baseline. A registered initializer is ``fn(cls_loss, prior_prob) -> float``;
``FocalRetinaNet.__init__`` calls it, so a model built from keywords (or a LazyConfig) and one
built from a cfg start from the same bias.
"""
from fvcore.common.registry import Registry

from .losses.registry import check_prior

BIAS_INIT_REGISTRY = Registry("FOCAL_DET_BIAS_INIT")
BIAS_INIT_REGISTRY.__doc__ = ("Registry for MODEL.FOCAL_DET.HEAD.BIAS_INIT: "
                              "fn(cls_loss, prior_prob) -> float.")


@BIAS_INIT_REGISTRY.register()
def PriorProb(cls_loss, prior_prob: float) -> float:
    check_prior(prior_prob)
    return float(cls_loss.prior_bias(prior_prob))


@BIAS_INIT_REGISTRY.register()
def Zero(cls_loss, prior_prob: float) -> float:
    return 0.0


def class_bias_pattern(name: str, cls_loss, prior_prob: float, num_classes: int):
    """The initial biases of one anchor's logits, a (C,) tensor: the loss's own pattern where it
    has one (softmax FL: K + 1 logits), else ``class_bias_value`` for each of the K classes."""
    import torch

    if hasattr(cls_loss, "class_bias_pattern"):
        return cls_loss.class_bias_pattern(name, prior_prob, num_classes)
    return torch.full((num_classes,), class_bias_value(name, cls_loss, prior_prob))


def class_bias_value(name: str, cls_loss, prior_prob: float) -> float:
    """The initial bias of the class logits given by the initializer registered as ``name``."""
    if name not in BIAS_INIT_REGISTRY:
        names = sorted(n for n, _ in BIAS_INIT_REGISTRY)
        raise ValueError(
            f"MODEL.FOCAL_DET.HEAD.BIAS_INIT={name!r} is not a registered bias initializer; "
            f"registered: {names}"
        )
    return BIAS_INIT_REGISTRY.get(name)(cls_loss, prior_prob)
