"""The contract of a classification loss: what ``FocalRetinaNet``, the anchor samplers (OHEM),
TorchScript export and the bias initializers call. Every loss in ``CLS_LOSS_REGISTRY`` derives
from :class:`ClassificationLoss`; nothing asks a loss whether it has a method.
"""
from typing import Optional, Tuple

from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


class ClassificationLoss:
    """Base class of focal_det's classification losses (the contract, in one place).

    Shapes: K classes; C = ``num_logits(K)`` logits per anchor (K, or K + 1 with a background
    logit last); ``logits`` (..., C), typically (R, C) or (N, R, C); ``labels`` (...) int64 with
    one value per row of C logits: the class in [0, K), K = background, -1 = ignored;
    ``targets`` (..., C) float. Losses are computed in float32 (float64 for float64 logits).

    A subclass implements the methods that raise ``NotImplementedError`` here (as Detectron2's
    ``DenseDetector`` does) and overrides the others where its defaults do not hold:

    - ``__call__(logits, labels) -> Tensor`` (0-dim): the loss *summed* over the non-ignored
      rows, differentiable. ``FocalRetinaNet`` calls it once per FPN level and adds the results,
      so it must be a plain sum (no normalization of its own).
    - ``per_anchor(logits, labels) -> Tensor`` (...): each row's loss summed over its C logits,
      0 for ignored rows, without gradient; what a sampler (OHEM) ranks anchors by.
    - ``loss(logits, targets, reduction="sum")``: the loss with float targets. ``reduction``
      (``REDUCTIONS``): "none" gives the loss's terms: (..., C) for a loss that is a sum over
      logits (the sigmoid family), (...) for one term per row (softmax FL); "mean" is their
      mean, "sum" their sum.
    - ``probs(logits) -> Tensor`` (..., K): class scores at inference.
    - ``prior_bias(prior_prob, num_classes) -> Tensor`` (C,): the biases of one anchor's logits
      with which ``probs`` gives the foreground probability ``prior_prob`` (the paper's prior
      initialization, called by the ``PriorProb`` initializer of ``focal_det.bias_init``).
    - ``num_logits(num_classes) -> int``: C; default K.
    - ``check_num_classes(num_classes)``: raise ValueError where the loss's parameters do not
      fit K classes (e.g. one alpha per class); default: nothing to check. A loss with
      per-class state (EFL's statistics) sizes it for K here, once (the model calls this when
      it is built); another K afterwards is an error.
    - ``observe_normalizer(normalizer, workers)``: the model calls it once per training
      forward, after that forward's calls: the loss it trains is their sum divided by
      ``normalizer`` (a float or a 0-dim tensor), and DDP averages the gradients of
      ``workers`` processes. Default: nothing. A loss that keeps statistics of its own
      gradient (EFL) turns that forward's sums into the gradient of the trained loss.
    - ``after_step()``: called after every optimizer step that is taken (a step the gradient
      scaler skips never calls it); focal_det's trainer registers it as an optimizer step hook
      for every loss that is a ``torch.nn.Module`` in the model (:mod:`focal_det.engine.
      loss_state`). Default: nothing. EFL adds the step's statistics to its buffers here.
    - ``probs_elementwise`` (class attribute): whether each score depends only on its own
      logit (default True); decoding then selects candidates on logits. False (softmax): it
      selects on the scores.
    - ``probs_affine() -> (a, b) or None``: (a, b) when ``probs(x) == sigmoid(a x + b)``
      elementwise; TorchScript scripting needs it (``focal_det.modeling.scripting``). Default
      None: the model can be exported by tracing only.
    """

    probs_elementwise: bool = True

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def per_anchor(self, logits: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement per_anchor")

    def loss(self, logits: Tensor, targets: Tensor, reduction: str = "sum") -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement loss")

    def probs(self, logits: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement probs")

    def prior_bias(self, prior_prob: float, num_classes: int) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement prior_bias")

    def num_logits(self, num_classes: int) -> int:
        return num_classes

    def check_num_classes(self, num_classes: int) -> None:
        pass

    def probs_affine(self) -> Optional[Tuple[float, float]]:
        return None

    def observe_normalizer(self, normalizer, workers: int = 1) -> None:
        pass

    def after_step(self) -> None:
        pass


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {list(REDUCTIONS)}")


def require_loss(cls_loss) -> ClassificationLoss:
    """``cls_loss`` if it is a :class:`ClassificationLoss`, else a TypeError saying so."""
    if not isinstance(cls_loss, ClassificationLoss):
        raise TypeError(f"cls_loss: {type(cls_loss).__name__} is not a "
                        "focal_det.losses.ClassificationLoss (derive your loss from it, or from "
                        "SigmoidClassificationLoss)")
    return cls_loss
