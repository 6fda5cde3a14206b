"""Classification losses of the Focal Loss paper: pure functions and a named registry (the
contract every registered loss follows in ``base.py``, the sigmoid family in
``functional.py``/``registry.py``, softmax FL in ``softmax.py``, Equalized Focal Loss for
long-tailed data in ``efl.py``)."""
from .base import REDUCTIONS, ClassificationLoss
from .functional import (
    sigmoid_balanced_cross_entropy,
    sigmoid_cross_entropy,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
)
from .registry import (
    CLS_LOSS_REGISTRY,
    BalancedCrossEntropy,
    CrossEntropy,
    FocalLoss,
    FocalLossStar,
    SigmoidClassificationLoss,
    build_cls_loss,
    registered_loss_names,
)
from .softmax import SoftmaxFocalLoss, softmax_focal_loss
from .efl import EqualizedFocalLoss

__all__ = [
    "ClassificationLoss",
    "REDUCTIONS",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "sigmoid_cross_entropy",
    "sigmoid_balanced_cross_entropy",
    "CLS_LOSS_REGISTRY",
    "build_cls_loss",
    "registered_loss_names",
    "SigmoidClassificationLoss",
    "FocalLoss",
    "FocalLossStar",
    "CrossEntropy",
    "BalancedCrossEntropy",
    "SoftmaxFocalLoss",
    "softmax_focal_loss",
    "EqualizedFocalLoss",
]
