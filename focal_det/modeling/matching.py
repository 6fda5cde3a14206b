"""Anchor matching with bounded memory: Detectron2's ``Matcher`` rules over GT chunks.

Detectron2 builds the full G x R IoU matrix per image (R anchors, G ground-truth boxes): 120k
anchors and 5,000 boxes is 2.4 GB for the matrix alone, more for pairwise_iou's temporaries.
``match_in_chunks`` computes it ``chunk`` GT rows at a time and keeps only per-anchor running
maxima, giving exactly the matches and labels of ``Matcher(iou_matrix)`` (ties between GT boxes
resolve to the lower index, as ``max`` does).

``MinIoUMatcher`` is Detectron's rule for the low-quality matches (the paper's code,
``detectron/roi_data/retinanet.py``): a GT box's best anchor becomes positive only if the
anchor's best IoU is at least ``low_quality_min_iou`` (Detectron: ``RETINANET.NEGATIVE_OVERLAP``,
0.4, because its background labels are written after the best-anchor labels and overwrite them);
Detectron2 makes it positive at any IoU. ``FocalRetinaNet(low_quality_min_iou=...)``,
``MODEL.FOCAL_DET.LOW_QUALITY_MATCH_MIN_IOU``; 0 keeps Detectron2's ``Matcher`` itself.
"""
from typing import Tuple

import torch
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor


class MinIoUMatcher(Matcher):
    """Detectron2's ``Matcher`` whose low-quality matches (each GT box's best anchors, ties
    included) become positive only where the anchor's best IoU over all GT boxes is at least
    ``low_quality_min_iou`` (elsewhere they keep the label of their IoU band). Loop-free and
    fixed-size: boolean masks, no ``nonzero``."""

    def __init__(self, thresholds, labels, low_quality_min_iou: float):
        super().__init__(thresholds, labels, allow_low_quality_matches=True)
        if not 0.0 <= low_quality_min_iou <= 1.0:
            raise ValueError("MODEL.FOCAL_DET.LOW_QUALITY_MATCH_MIN_IOU="
                             f"{low_quality_min_iou!r} is outside the allowed range [0, 1]")
        self.low_quality_min_iou = float(low_quality_min_iou)

    def set_low_quality_matches_(self, match_labels, match_quality_matrix):
        best_of_gt = match_quality_matrix.max(dim=1, keepdim=True).values  # (G, 1)
        is_best = (match_quality_matrix == best_of_gt).any(dim=0)  # (R,)
        good = match_quality_matrix.max(dim=0).values >= self.low_quality_min_iou
        match_labels.masked_fill_(is_best & good, 1)


def with_low_quality_min_iou(matcher: Matcher, min_iou: float) -> Matcher:
    """``matcher`` with Detectron's low-quality rule at ``min_iou`` (see :class:`MinIoUMatcher`);
    ``matcher`` itself where ``min_iou`` is 0 (Detectron2's rule) or it allows no low-quality
    matches."""
    if min_iou < 0 or min_iou > 1:
        raise ValueError(f"MODEL.FOCAL_DET.LOW_QUALITY_MATCH_MIN_IOU={min_iou!r} is outside the "
                         "allowed range [0, 1]")
    if min_iou == 0 or not matcher.allow_low_quality_matches:
        return matcher
    return MinIoUMatcher(matcher.thresholds[1:-1], matcher.labels, min_iou)


@torch.no_grad()
def match_in_chunks(matcher: Matcher, gt_boxes: Boxes, anchors: Boxes,
                    chunk: int) -> Tuple[Tensor, Tensor]:
    """Returns (matched_idxs (R,) int64, match_labels (R,) int8), as ``matcher`` would."""
    num_gt, num_anchors = len(gt_boxes), len(anchors)
    if num_gt <= chunk:
        return matcher(pairwise_iou(gt_boxes, anchors))
    device = anchors.tensor.device
    best = torch.full((num_anchors,), -1.0, device=device)
    best_idx = torch.zeros(num_anchors, dtype=torch.int64, device=device)
    low_quality = torch.zeros(num_anchors, dtype=torch.bool, device=device)
    for start in range(0, num_gt, chunk):
        iou = pairwise_iou(gt_boxes[start:start + chunk], anchors)  # (c, R)
        val, idx = iou.max(dim=0)
        better = val > best
        best = torch.where(better, val, best)
        best_idx = torch.where(better, idx + start, best_idx)
        if matcher.allow_low_quality_matches:
            # Anchors that are the best match of some GT box (Matcher.set_low_quality_matches_)
            low_quality |= (iou == iou.max(dim=1, keepdim=True).values).any(dim=0)
        del iou
    labels = torch.ones(num_anchors, dtype=torch.int8, device=device)
    for label, low, high in zip(matcher.labels, matcher.thresholds[:-1], matcher.thresholds[1:]):
        labels[(best >= low) & (best < high)] = label
    if matcher.allow_low_quality_matches:
        min_iou = getattr(matcher, "low_quality_min_iou", 0.0)  # MinIoUMatcher: Detectron's rule
        labels[low_quality & (best >= min_iou)] = 1
    return best_idx, labels
