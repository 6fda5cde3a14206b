"""The class conv for K logits per anchor (the sigmoid losses) or K + 1 (softmax FL, background
last) with its initial biases, the identity score map used when scores are computed before
decoding, and what checkpoints record and check of the class conv (``ClassHeadCheck``)."""
from typing import Dict, Optional

import torch
from torch import Tensor

from ..bias_init import class_bias
from ..errors import ClassCountMismatchError
from ..losses.base import ClassificationLoss


def identity(x: Tensor) -> Tensor:
    return x


def wider_class_conv(conv: torch.nn.Conv2d, num_classes: int, num_logits: int):
    """RetinaNetHead's class conv with ``num_logits`` outputs per anchor instead of
    ``num_classes``, initialized as RetinaNetHead initializes it (weights N(0, 0.01))."""
    anchors = conv.out_channels // num_classes
    wider = torch.nn.Conv2d(conv.in_channels, anchors * num_logits, kernel_size=3, stride=1,
                            padding=1).to(conv.weight.device)
    torch.nn.init.normal_(wider.weight, mean=0, std=0.01)
    return wider


def class_conv(conv: torch.nn.Conv2d, cls_loss: ClassificationLoss, num_classes: int,
               bias_init: str, prior_prob: float) -> torch.nn.Conv2d:
    """RetinaNetHead's class conv ``conv`` made fit for ``cls_loss``: ``cls_loss.num_logits(K)``
    outputs per anchor (a wider conv where that is not K), each anchor's biases from the
    initializer registered as ``bias_init`` (:mod:`focal_det.bias_init`)."""
    num_logits = cls_loss.num_logits(num_classes)
    if num_logits != num_classes:
        conv = wider_class_conv(conv, num_classes, num_logits)
    pattern = class_bias(bias_init, cls_loss, prior_prob, num_classes)
    with torch.no_grad():
        conv.bias.copy_(pattern.repeat(conv.out_channels // num_logits))
    return conv


class ClassHeadCheck:
    """What focal_det's checkpoints record of a RetinaNet class conv and what loading checks
    (the hook :class:`focal_det.checkpoint.FocalCheckpointer` asks the model for):

    - a sigmoid class head (K logits per anchor) never loads into a softmax model (K + 1,
      background last), nor the reverse, in training either: the shapes can even agree (K + 1
      sigmoid classes), the meaning never does. Our checkpoints say which they are
      (``focal_det_head``); others are sigmoid RetinaNets (Detectron2's);
    - with ``same_classes`` (evaluation, prediction), weights for another class count are
      refused naming both, instead of a shape warning and a randomly initialized classifier;
    - per-class state of the loss (``loss_state``: name -> shape of the model's ``cls_loss.*``
      buffers, EFL's gradient statistics) saved for another class count is refused naming
      both counts, always: Detectron2 would skip it with a warning and train on fresh ones.
    """

    KEY = "head.cls_score.weight"
    META = "focal_det_head"

    def __init__(self, own_shape, num_classes: int, num_logits: int, loss_name: str,
                 loss_state: Optional[Dict[str, tuple]] = None):
        self.own_shape, self.loss_name = tuple(own_shape), loss_name
        self.num_classes, self.num_logits = int(num_classes), int(num_logits)
        self.loss_state = {k: tuple(v) for k, v in (loss_state or {}).items()}

    def checkpoint_metadata(self) -> dict:
        return {self.META: {"num_classes": self.num_classes, "num_logits": self.num_logits}}

    def check_checkpoint(self, checkpoint: dict, *, source: str, same_classes: bool) -> None:
        self._check_loss_state(checkpoint.get("model", {}), source)
        theirs = checkpoint.get("model", {}).get(self.KEY)
        if theirs is None:
            return  # other layouts (e.g. Caffe2 names) go through matching heuristics
        theirs = tuple(theirs.shape)
        their_softmax = self._check_kind(theirs, checkpoint.get(self.META), source)
        if same_classes:
            self._check_count(theirs, their_softmax, source)

    def _check_loss_state(self, weights: dict, source: str) -> None:
        for key, own in self.loss_state.items():
            theirs = weights.get(key)
            if theirs is not None and tuple(theirs.shape) != own:
                count = theirs.shape[0] if len(theirs.shape) else 1
                raise ClassCountMismatchError(
                    f"{source}: its {key} holds the loss's statistics for {count} classes, but "
                    f"this model has {own[0] if own else 1} (MODEL.RETINANET.NUM_CLASSES "
                    f"{self.num_classes}, MODEL.FOCAL_DET.CLS_LOSS.NAME {self.loss_name}). "
                    "Statistics are per class and cannot be carried over; to start them "
                    "afresh from these weights, remove the checkpoint's cls_loss.* entries.")

    def _check_kind(self, theirs, meta, source: str) -> bool:
        """Whether their head is softmax; raises where it is not the kind of this one."""
        own, k = self.own_shape, self.num_classes
        own_softmax = self.num_logits != k
        if meta is not None:
            their_softmax = meta["num_logits"] != meta["num_classes"]
        else:
            their_softmax = False  # Detectron2's RetinaNet and our older checkpoints: sigmoid
            if not own_softmax or theirs != (own[0] // self.num_logits * k, *own[1:]):
                return False  # another class count: the class-count checks and warnings apply
        if own_softmax != their_softmax:
            kind = {True: "softmax (K + 1 logits per anchor, background last)",
                    False: "sigmoid (K logits per anchor)"}
            raise ClassCountMismatchError(
                f"{source}: its class head {theirs} is {kind[their_softmax]}, but this model's "
                f"{own} is {kind[own_softmax]} (MODEL.FOCAL_DET.CLS_LOSS.NAME "
                f"{self.loss_name}); one cannot be loaded into the other. Use the loss the "
                "weights were trained with.")
        return their_softmax

    def _check_count(self, theirs, their_softmax: bool, source: str) -> None:
        if theirs == self.own_shape:
            return
        anchors = self.own_shape[0] // self.num_logits
        theirs_classes = theirs[0] / anchors - their_softmax  # softmax: K + 1 logits
        named = (f"{int(theirs_classes)} classes" if theirs_classes.is_integer()
                 else f"{theirs[0]} outputs, not a multiple of {anchors} anchors")
        raise ClassCountMismatchError(
            f"{source}: its class conv was trained for {named}, but "
            f"MODEL.RETINANET.NUM_CLASSES is {self.num_classes}. Evaluating it would use a "
            "randomly initialized classifier. Set MODEL.RETINANET.NUM_CLASSES to match the "
            "weights (fine-tuning from them in training is allowed).")
