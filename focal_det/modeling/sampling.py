"""Which anchors the classification loss trains on: all of them (the paper's FL, the default) or
a sampled minibatch, as a named registry (``MODEL.FOCAL_DET.SAMPLER.NAME``).

``OHEM``: online hard example mining for a one-stage detector, as the paper ran it for Table 1d
(Section 5.1; no public one-stage implementation exists). Per image:

1. every non-ignored anchor is scored by its loss: the classification loss summed over the K
   classes, plus, for foreground anchors, the box-regression loss (the paper scores "each
   example by its loss"; Fast R-CNN's OHEM, which it follows, scores RoIs by classification
   plus box loss);
2. the ``pre_nms_topk`` highest-scoring anchors go through NMS over the anchors' boxes at
   ``nms_thresh`` (anchors of all images in one batched NMS);
3. the minibatch is the ``batch_size_per_image`` highest-loss survivors; with
   ``positive_fraction`` f > 0 ("OHEM 1:3" is f = 1/4, as SSD and Fast R-CNN), at most f of them
   are foreground and negatives fill the rest.

The classification loss (the configured one; Table 1d's configs use CE) is then summed over the
chosen anchors and divided by their number: Fast R-CNN's OHEM averages the loss over the hard
minibatch, and the paper gives OHEM no other normalizer. The box loss is unchanged (all
foreground anchors, RetinaNet's normalizer). Step 2 on the top ``pre_nms_topk`` only is exact
whenever at least ``batch_size_per_image`` anchors survive among them (suppression only comes
from higher-loss boxes, all of which are in the top k).

Cost per iteration: fixed-size tensor work (top-k, one batched NMS, cumulative sums, a scatter),
no Python loop over anchors or images; the NMS result has a data-dependent size (one host sync
on CUDA, inside torchvision's NMS).
"""
from typing import Callable, List

import torch
from detectron2.config import configurable
from detectron2.layers import batched_nms
from fvcore.common.registry import Registry
from fvcore.nn import smooth_l1_loss
from torch import Tensor

ANCHOR_SAMPLER_REGISTRY = Registry("FOCAL_DET_ANCHOR_SAMPLER")
ANCHOR_SAMPLER_REGISTRY.__doc__ = """Registry for MODEL.FOCAL_DET.SAMPLER.NAME: which anchors the
classification loss trains on. An entry is called with a cfg and returns an object with
``select(anchors, gt_labels, num_classes, anchor_loss) -> (N, R) bool`` (``anchors`` (R, 4)
XYXY; ``gt_labels`` (N, R): class, ``num_classes`` = background, -1 = ignored;
``anchor_loss(with_box: bool) -> (N, R)``: each anchor's loss, see :func:`anchor_losses`) and
``normalizer(selected) -> Tensor``. It gets this batch's data as arguments, never the model."""

_KEY = "MODEL.FOCAL_DET.SAMPLER.OHEM"


def build_anchor_sampler(cfg):
    """The sampler named by ``MODEL.FOCAL_DET.SAMPLER.NAME``, or None ("": every anchor)."""
    name = cfg.MODEL.FOCAL_DET.SAMPLER.NAME
    if not name:
        return None
    if name not in ANCHOR_SAMPLER_REGISTRY:
        names = sorted(n for n, _ in ANCHOR_SAMPLER_REGISTRY)
        raise ValueError(f"MODEL.FOCAL_DET.SAMPLER.NAME={name!r} is not a registered anchor "
                         f"sampler; registered: {names} (or '' for every anchor)")
    return ANCHOR_SAMPLER_REGISTRY.get(name)(cfg)


@torch.no_grad()
def anchor_losses(cls_loss, num_classes: int, anchors: Tensor, pred_logits: List[Tensor],
                  gt_labels: Tensor, pred_anchor_deltas: List[Tensor], gt_boxes: List[Tensor],
                  box2box_transform=None, smooth_l1_beta: float = 0.0,
                  with_box: bool = True) -> Tensor:
    """(N, R), no gradient: each anchor's classification loss summed over its logits
    (``cls_loss.per_anchor``; 0 where ignored), plus, ``with_box`` and given the model's
    ``box2box_transform`` (its box loss is smooth L1), each foreground anchor's box loss.

    ``anchors`` (R, 4); ``pred_logits``, ``pred_anchor_deltas``: per level (N, Ri, C or 4);
    ``gt_labels`` (N, R); ``gt_boxes``: N tensors (R, 4), as ``FocalRetinaNet.losses`` has them.
    """
    loss = cls_loss.per_anchor(torch.cat(pred_logits, dim=1), gt_labels)
    if with_box and box2box_transform is not None:
        pos = (gt_labels >= 0) & (gt_labels < num_classes)
        deltas = torch.stack([box2box_transform.get_deltas(anchors, b) for b in gt_boxes])
        box = smooth_l1_loss(torch.cat(pred_anchor_deltas, dim=1), deltas, smooth_l1_beta,
                             reduction="none").sum(-1)
        loss = loss + torch.where(pos, box, torch.zeros_like(box))
    return loss


@torch.no_grad()
def ohem_select(scores: Tensor, boxes: Tensor, valid: Tensor, is_pos: Tensor,
                batch_size: int, nms_thresh: float, positive_fraction: float,
                pre_nms_topk: int) -> Tensor:
    """The OHEM minibatch as an (N, R) bool mask.

    Args:
        scores: (N, R) loss of each anchor; boxes: (R, 4) the anchors' boxes (XYXY);
        valid: (N, R) anchors that may be chosen (not ignored); is_pos: (N, R) foreground.
    """
    n, r = scores.shape
    m = min(pre_nms_topk, r)
    s = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    top, idx = s.topk(m, dim=1)  # (N, M), sorted from the highest loss
    candidate = torch.isfinite(top)
    image = torch.arange(n, device=scores.device).repeat_interleave(m)
    keep = batched_nms(boxes[idx.flatten()], top.flatten().nan_to_num(neginf=-1e30), image,
                       nms_thresh)
    kept = torch.zeros(n * m, dtype=torch.bool, device=scores.device)
    kept[keep] = True
    kept = kept.view(n, m) & candidate
    if positive_fraction > 0:
        pos = torch.gather(is_pos, 1, idx) & kept
        neg = kept & ~pos
        chosen_pos = pos & (pos.cumsum(1) <= int(positive_fraction * batch_size))
        room = batch_size - chosen_pos.sum(1, keepdim=True)
        chosen = chosen_pos | (neg & (neg.cumsum(1) <= room))
    else:
        chosen = kept & (kept.cumsum(1) <= batch_size)
    return torch.zeros_like(valid).scatter_(1, idx, chosen)


@ANCHOR_SAMPLER_REGISTRY.register()
class OHEM:
    """See the module docstring."""

    @configurable
    def __init__(self, *, batch_size_per_image: int = 128, nms_thresh: float = 0.5,
                 positive_fraction: float = -1.0, pre_nms_topk: int = 4096,
                 box_loss: bool = True):
        if batch_size_per_image < 1:
            raise ValueError(f"{_KEY}.BATCH_SIZE_PER_IMAGE={batch_size_per_image!r} must be >= 1")
        if not 0.0 < nms_thresh <= 1.0:
            raise ValueError(f"{_KEY}.NMS_THRESH={nms_thresh!r} must be in (0, 1]")
        if not (positive_fraction <= 0 or positive_fraction < 1.0):
            raise ValueError(f"{_KEY}.POSITIVE_FRACTION={positive_fraction!r}: in (0, 1), or "
                             "<= 0 for no ratio (0.25 is 'OHEM 1:3')")
        if pre_nms_topk < batch_size_per_image:
            raise ValueError(f"{_KEY}.PRE_NMS_TOPK={pre_nms_topk!r} must be >= "
                             f"BATCH_SIZE_PER_IMAGE ({batch_size_per_image})")
        self.batch_size, self.nms_thresh = batch_size_per_image, nms_thresh
        self.positive_fraction, self.pre_nms_topk = positive_fraction, pre_nms_topk
        self.box_loss = box_loss

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FOCAL_DET.SAMPLER.OHEM
        return {"batch_size_per_image": c.BATCH_SIZE_PER_IMAGE, "nms_thresh": c.NMS_THRESH,
                "positive_fraction": c.POSITIVE_FRACTION, "pre_nms_topk": c.PRE_NMS_TOPK,
                "box_loss": c.BOX_LOSS}

    def select(self, anchors: Tensor, gt_labels: Tensor, num_classes: int,
               anchor_loss: Callable[[bool], Tensor]) -> Tensor:
        """(N, R) bool: the OHEM minibatch, scored by ``anchor_loss(self.box_loss)``."""
        scores = anchor_loss(self.box_loss)
        valid = gt_labels >= 0
        is_pos = valid & (gt_labels < num_classes)
        return ohem_select(scores, anchors, valid, is_pos, self.batch_size, self.nms_thresh,
                           self.positive_fraction, self.pre_nms_topk)

    @staticmethod
    def normalizer(selected: Tensor) -> Tensor:
        return selected.sum().clamp_min(1).to(torch.float32)

    def __repr__(self):
        return (f"OHEM(batch_size_per_image={self.batch_size}, nms_thresh={self.nms_thresh}, "
                f"positive_fraction={self.positive_fraction}, "
                f"pre_nms_topk={self.pre_nms_topk}, box_loss={self.box_loss})")
