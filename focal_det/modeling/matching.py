"""Anchor matching with bounded memory: Detectron2's ``Matcher`` rules over GT chunks.

Detectron2 builds the full G x R IoU matrix per image (R anchors, G ground-truth boxes): 120k
anchors and 5,000 boxes is 2.4 GB for the matrix alone, more for pairwise_iou's temporaries.
``match_in_chunks`` computes it ``chunk`` GT rows at a time and keeps only per-anchor running
maxima, giving exactly the matches and labels of ``Matcher(iou_matrix)`` (ties between GT boxes
resolve to the lower index, as ``max`` does).
"""
from typing import Tuple

import torch
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor


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
        labels[low_quality] = 1
    return best_idx, labels
