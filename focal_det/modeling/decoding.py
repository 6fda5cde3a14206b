"""RetinaNet post-processing for a batch (``FocalRetinaNet.forward_inference``), with
Detectron2's result and less work.

It runs in two scriptable halves with the loss's ``probs`` applied in between, so that eager
code can use any ``probs`` and TorchScript (``focal_det.modeling.scripting``) the affine-sigmoid
form that every built-in loss has:

1. :func:`select_candidates` (logits only): per level, the ``topk_candidates`` anchors with the
   best per-anchor maximum logit, and their K logits each.
2. ``probs`` on those candidates' logits (a few thousand numbers, not all R x K).
3. :func:`finish_detections`: the per-level top-k scores above the threshold, box decoding,
   class-wise NMS and the best ``max_detections``.
"""
from typing import List, Tuple

import torch
from detectron2.layers import batched_nms, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from torch import Tensor


def select_candidates(pred_logits: List[Tensor],
                      topk_candidates: int) -> Tuple[List[Tensor], List[Tensor]]:
    """Per level: the candidate anchors (N, k) and their logits (N, k, K).

    Detectron2 applies ``probs`` to every (anchor, class) logit, thresholds them all and sorts
    every score that passes (4.6M scores on P3 of a 640x640 image; all of them for an untrained
    model), with two host syncs per level and image. Here the full logit tensor is read once,
    for the per-anchor maximum over classes (one reduction per level for the whole batch). The k
    anchors with the best maxima hold every one of the level's k best scores (each of them has
    at least one score >= the k-th best maximum, so the k-th best score is at least that, and an
    anchor outside them has no score above it), provided ``probs`` is non-decreasing."""
    cand_idx: List[Tensor] = []
    cand_logits: List[Tensor] = []
    for logits in pred_logits:  # (N, Ri, K)
        best = torch.amax(logits, dim=2)  # (N, Ri)
        k = min(topk_candidates, best.shape[1])
        idx = best.topk(k, dim=1).indices  # (N, k)
        cand_idx.append(idx)
        cand_logits.append(torch.gather(
            logits, 1, idx.unsqueeze(2).expand(-1, -1, logits.shape[2])))
    return cand_idx, cand_logits


def finish_detections(anchors: List[Boxes], cand_idx: List[Tensor], cand_scores: List[Tensor],
                      pred_anchor_deltas: List[Tensor], image_sizes: List[Tuple[int, int]],
                      box2box_transform: Box2BoxTransform, score_thresh: float,
                      topk_candidates: int, nms_thresh: float,
                      max_detections: int) -> List[Instances]:
    """The candidates' scores (per level (N, k, K)) to detections, as Detectron2's
    ``inference_single_image``. The level's top-k without those at or below the threshold is
    the top-k of those above it, which is Detectron2's result. Every size is fixed, so the only
    host sync per image is the one threshold ``nonzero``. Only the order of exactly tied scores
    can differ from Detectron2."""
    num_classes = cand_scores[0].shape[2]
    all_anchors = cat([a.tensor for a in anchors], dim=0)  # (R, 4)
    all_deltas = cat(pred_anchor_deltas, dim=1)  # (N, R, 4)
    offsets: List[int] = [0]
    for a in anchors[:-1]:
        offsets.append(offsets[-1] + len(a))
    results: List[Instances] = []
    for i, image_size in enumerate(image_sizes):
        scores_l: List[Tensor] = []
        anchor_l: List[Tensor] = []
        classes_l: List[Tensor] = []
        for level in range(len(cand_scores)):
            scores = cand_scores[level][i].flatten()  # (k * K,)
            top, idx = scores.topk(min(topk_candidates, scores.numel()))
            scores_l.append(top)
            anchor_l.append(cand_idx[level][i][idx // num_classes] + offsets[level])
            classes_l.append(idx % num_classes)
        scores_i, anchor_i, classes_i = cat(scores_l), cat(anchor_l), cat(classes_l)
        keep = torch.nonzero(scores_i > score_thresh).squeeze(1)  # the one host sync
        scores_i, anchor_i, classes_i = scores_i[keep], anchor_i[keep], classes_i[keep]
        boxes = box2box_transform.apply_deltas(all_deltas[i][anchor_i], all_anchors[anchor_i])
        nms_keep = batched_nms(boxes, scores_i, classes_i, nms_thresh)[:max_detections]
        result = Instances(image_size)
        result.pred_boxes = Boxes(boxes[nms_keep])
        result.scores = scores_i[nms_keep]
        result.pred_classes = classes_i[nms_keep]
        results.append(result)
    return results


def decode_detections(anchors: List[Boxes], pred_logits: List[Tensor],
                      pred_anchor_deltas: List[Tensor], image_sizes, *, probs,
                      box2box_transform, score_thresh: float, topk_candidates: int,
                      nms_thresh: float, max_detections: int) -> List[Instances]:
    """RetinaNet post-processing for a batch, as Detectron2's ``inference_single_image``:
    per level, the top ``topk_candidates`` scores above ``score_thresh``; boxes decoded;
    class-wise NMS; at most ``max_detections`` per image, best first.

    Args:
        anchors: one Boxes per level (Ri anchors each).
        pred_logits: per level (N, Ri, K); pred_anchor_deltas: per level (N, Ri, 4).
        image_sizes: N (height, width).
        probs: elementwise, non-decreasing map from logits to scores (e.g. sigmoid).
    Returns:
        N Instances with pred_boxes, scores, pred_classes, best first.
    """
    cand_idx, cand_logits = select_candidates(pred_logits, topk_candidates)
    return finish_detections(anchors, cand_idx, [probs(x) for x in cand_logits],
                             pred_anchor_deltas, list(image_sizes), box2box_transform,
                             score_thresh, topk_candidates, nms_thresh, max_detections)
