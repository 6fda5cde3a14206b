"""Bias initialization of the last classification conv, as a named registry.

``PriorProb`` (the paper): every anchor starts with foreground probability pi
(``MODEL.FOCAL_DET.HEAD.PRIOR_PROB``), through the loss's own ``prior_bias`` so that FL* gets
b = (logit(pi) - beta) / gamma and FL/CE get b = -log((1 - pi) / pi). ``Zero``: b = 0, the
paper's no-prior baseline. A registered initializer is ``fn(cfg, cls_loss) -> float``.
"""
from detectron2.config import CfgNode
from fvcore.common.registry import Registry

from .losses.registry import check_prior

BIAS_INIT_REGISTRY = Registry("FOCAL_DET_BIAS_INIT")
BIAS_INIT_REGISTRY.__doc__ = "Registry for MODEL.FOCAL_DET.HEAD.BIAS_INIT: fn(cfg, loss) -> float."


@BIAS_INIT_REGISTRY.register()
def PriorProb(cfg: CfgNode, cls_loss) -> float:
    prior = cfg.MODEL.FOCAL_DET.HEAD.PRIOR_PROB
    check_prior(prior)
    return float(cls_loss.prior_bias(prior))


@BIAS_INIT_REGISTRY.register()
def Zero(cfg: CfgNode, cls_loss) -> float:
    return 0.0


def class_bias_value(cfg: CfgNode, cls_loss) -> float:
    """The initial bias of the class logits named by ``MODEL.FOCAL_DET.HEAD.BIAS_INIT``."""
    name = cfg.MODEL.FOCAL_DET.HEAD.BIAS_INIT
    if name not in BIAS_INIT_REGISTRY:
        names = sorted(n for n, _ in BIAS_INIT_REGISTRY)
        raise ValueError(
            f"MODEL.FOCAL_DET.HEAD.BIAS_INIT={name!r} is not a registered bias initializer; "
            f"registered: {names}"
        )
    return BIAS_INIT_REGISTRY.get(name)(cfg, cls_loss)
