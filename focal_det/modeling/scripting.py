"""TorchScript *scripting* of FocalRetinaNet, the way Detectron2 scripts its RetinaNet.

    from focal_det.modeling.scripting import script_model
    scripted = script_model(model)          # model: an eval-mode FocalRetinaNet
    instances = scripted([{"image": chw_tensor}])   # List[Instances], not post-processed

As with Detectron2's ``scripting_with_instances`` (which this calls), the scripted model takes
``List[Dict[str, Tensor]]`` and returns one scriptable ``Instances`` per image (pred_boxes,
scores, pred_classes) in the *input* image's coordinates: turn it back into a Detectron2
``Instances`` with :func:`to_instances` and rescale with ``detector_postprocess`` as
Detectron2's own tests do. Inference only.

What is scripted is a copy of the model prepared for TorchScript; the model itself is not
changed:

- normalization layers are folded into their convolutions for good (eval mode: the same
  arithmetic the eager model's folded convs do; ``focal_det.modeling.fold``), so neither
  ``FoldedNormConv2d`` nor ``FrozenBatchNorm2d`` remain;
- Detectron2's ``CycleBatchNormList`` (per-level BN in the head), which cannot be scripted
  (it indexes a ModuleList with a variable), becomes an equivalent module that can;
- probabilities are ``sigmoid(a x + b)`` with the loss's ``probs_affine()`` (a, b): (1, 0) for
  FL, CE and balanced CE, (gamma, beta) for FL*. A loss whose ``probs_affine()`` is None
  (softmax FL, a custom ``probs``) is refused: export it by tracing.
"""
import copy
from typing import Dict, List

import torch
from detectron2.export import scripting_with_instances
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.layers.batch_norm import CycleBatchNormList
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from .decoding import finish_detections, select_candidates
from .fold import _fold, unfold_norms
from .retinanet import FocalRetinaNet

FIELDS = {"pred_boxes": Boxes, "scores": Tensor, "pred_classes": Tensor}


class ScriptableCycleBatchNorm(nn.Module):
    """Detectron2's ``CycleBatchNormList`` (call i uses BN i mod L, then the shared affine
    weight and bias), written so that TorchScript can compile it."""

    def __init__(self, cycle: CycleBatchNormList):
        super().__init__()
        self.norms = nn.ModuleList(list(cycle))
        channels = cycle[0].num_features
        if cycle._affine:
            self.weight, self.bias = cycle.weight, cycle.bias
        else:  # identity affine
            self.weight = nn.Parameter(torch.ones(channels), requires_grad=False)
            self.bias = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self._pos: int = cycle._pos

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for i, norm in enumerate(self.norms):
            if i == self._pos:
                out = norm(x)
        self._pos = (self._pos + 1) % len(self.norms)
        return out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ScriptableFocalRetinaNet(FocalRetinaNet):
    """FocalRetinaNet's inference path without Python-only constructs (``super()``, a Python
    ``probs`` callable, the training branch). Made by :func:`prepare_for_scripting`."""

    prob_scale: float
    prob_shift: float

    def forward(self, batched_inputs: List[Dict[str, Tensor]]) -> List[Instances]:
        images = [(x["image"].to(self.pixel_mean.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        image_list = ImageList.from_tensors(images, self.backbone.size_divisibility)
        tensor = image_list.tensor
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        features = self.backbone(tensor)
        feature_list = [features[f] for f in self.head_in_features]
        predictions = self.head(feature_list)
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(feature_list)
        cand_idx, cand_logits = select_candidates(pred_logits, self.test_topk_candidates)
        cand_scores = [torch.sigmoid(x * self.prob_scale + self.prob_shift) for x in cand_logits]
        return finish_detections(
            anchors, cand_idx, cand_scores, pred_anchor_deltas, image_list.image_sizes,
            self.box2box_transform, self.test_score_thresh, self.test_topk_candidates,
            self.test_nms_thresh, self.max_detections_per_image)


def _bake_norms(model: nn.Module) -> None:
    """Fold every Detectron2 Conv2d's FrozenBN or (eval-mode) BN into its weight and bias for
    good, and give folded convs back their plain class."""
    for module in model.modules():
        norm = getattr(module, "norm", None)
        if not isinstance(module, Conv2d) or not isinstance(norm, (FrozenBatchNorm2d,
                                                                    nn.BatchNorm2d)):
            continue
        if isinstance(norm, nn.BatchNorm2d) and norm.running_mean is None:
            continue  # normalizes with batch statistics even in eval: not foldable
        weight, bias = _fold(module)
        module.weight = nn.Parameter(weight, requires_grad=False)
        module.bias = nn.Parameter(bias, requires_grad=False)
        module.norm = None
    unfold_norms(model)


def prepare_for_scripting(model: FocalRetinaNet) -> ScriptableFocalRetinaNet:
    """A scriptable copy of an eval-mode ``model`` (see the module docstring)."""
    if not isinstance(model, FocalRetinaNet):
        raise TypeError(f"expected a FocalRetinaNet, got {type(model).__name__}")
    if model.training:
        raise ValueError("script_model: call model.eval() first (scripting is for inference)")
    affine = model.cls_loss.probs_affine()
    if affine is None:
        raise ValueError(
            f"script_model: the loss {type(model.cls_loss).__name__} gives no probs_affine(), "
            "so its probs() cannot be written in TorchScript; define probs_affine() -> (a, b) "
            "if probs(x) == sigmoid(a * x + b), or export by tracing")
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        _bake_norms(copy_)
    for parent in copy_.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, CycleBatchNormList):
                setattr(parent, name, ScriptableCycleBatchNorm(child))
    copy_.__class__ = ScriptableFocalRetinaNet
    copy_.prob_scale, copy_.prob_shift = float(affine[0]), float(affine[1])
    del copy_.cls_loss  # a Python object; the scripted model has prob_scale/prob_shift instead
    return copy_


def to_instances(scripted) -> Instances:
    """A scripted model's output for one image as a regular Detectron2 ``Instances`` (what
    ``detectron2.utils.testing.convert_scripted_instances`` does, without importing that
    module, which needs ``pkg_resources`` on Detectron2 main)."""
    out = Instances(scripted.image_size)
    for name in FIELDS:
        value = getattr(scripted, "_" + name, None)
        if value is not None:
            out.set(name, value)
    return out


def script_model(model: FocalRetinaNet) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of :func:`prepare_for_scripting` (model), with Detectron2's
    ``scripting_with_instances`` for the output fields pred_boxes, scores, pred_classes."""
    return scripting_with_instances(prepare_for_scripting(model), FIELDS)


class _FieldsAdapter(nn.Module):
    """Returns plain dicts of tensors instead of Instances (as Detectron2's
    tools/deploy/export_model.py does), so that the saved model runs with torch alone; boxes
    clipped to the image and empty ones dropped, as ``detector_postprocess`` does."""

    def __init__(self, model: ScriptableFocalRetinaNet):
        super().__init__()
        self.model = model

    def forward(self, inputs: List[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        outputs: List[Dict[str, Tensor]] = []
        for instances in self.model(inputs):
            boxes = instances.pred_boxes
            boxes.clip(instances.image_size)
            keep = boxes.nonempty()
            outputs.append({"pred_boxes": boxes.tensor[keep], "scores": instances.scores[keep],
                            "pred_classes": instances.pred_classes[keep]})
        return outputs


def script_for_export(model: FocalRetinaNet) -> torch.jit.ScriptModule:
    """Scripted model for deployment: ``[{"image": (3, H, W) float}]`` in, per image
    ``{"pred_boxes": (N, 4), "scores": (N,), "pred_classes": (N,)}`` out (input pixels)."""
    return scripting_with_instances(_FieldsAdapter(prepare_for_scripting(model)).eval(), FIELDS)
