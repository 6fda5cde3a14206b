"""Crowd regions (COCO's ``iscrowd: 1``), opt-in: anchors mostly inside a crowd box are not
trained as background.

Detectron2 drops crowd annotations in its mapper, so anchors on a crowd of people are trained as
background. With ``MODEL.FOCAL_DET.CROWD.ENABLED``, focal_det's mapper keeps the crowd boxes
(``dataset_dict["crowd_boxes"]``, transformed with the image) and ``FocalRetinaNet`` ignores
(label -1: no classification loss, no box loss) every *background* anchor whose intersection
with a crowd box covers at least ``CROWD.IOA_THRESH`` of the anchor's own area. Crowd boxes are
never objects, so they never make an anchor positive; an anchor matched to an annotated object
stays positive even inside a crowd region (the object is annotated), as Detectron's RPN treats
crowds. Work per image: one (crowds x anchors) intersection matrix and a max; no Python loop
over anchors.
"""
from typing import Optional

import torch
from detectron2.structures import Boxes, pairwise_ioa
from torch import Tensor


@torch.no_grad()
def ignore_crowd_anchors(labels: Tensor, anchors: Boxes, crowd_boxes: Optional[Boxes],
                         ioa_thresh: float, num_classes: int) -> Tensor:
    """``labels`` (R,) (class, ``num_classes`` = background, -1 = ignored) with the background
    anchors covered by a crowd box (intersection / anchor area >= ``ioa_thresh``) set to -1."""
    if crowd_boxes is None or len(crowd_boxes) == 0:
        return labels
    ioa = pairwise_ioa(crowd_boxes.to(anchors.tensor.device), anchors)  # (C, R)
    covered = ioa.max(dim=0).values >= ioa_thresh
    return torch.where(covered & (labels == num_classes), torch.full_like(labels, -1), labels)
