"""Crowd regions (MODEL.FOCAL_DET.CROWD, opt-in): background anchors covered by a crowd box are
ignored, positives stay positive, crowd boxes never make positives; the mapper keeps crowd boxes
(flipped with the image) only when asked; with the key on and no crowds, training is unchanged;
images whose every box is a crowd train with a finite loss."""
import copy
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from focal_det.data.checks import FocalDatasetMapper
from focal_det.modeling.crowd import ignore_crowd_anchors
from tests.common import get_tiny_cfg, random_batch

K = 3


def test_hand_made_boxes():
    anchors = Boxes(torch.tensor([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30],
                                  [40, 40, 50, 50], [0, 0, 4, 10]], dtype=torch.float32))
    crowd = Boxes(torch.tensor([[0, 0, 10, 10]], dtype=torch.float32))
    labels = torch.tensor([K, K, K, 1, K])
    out = ignore_crowd_anchors(labels, anchors, crowd, 0.5, K)
    # anchor 0: inside (IoA 1) -> ignored; 1: IoA 25/100 < .5 -> background; 2: outside;
    # 3: positive, stays; 4: IoA 1 -> ignored
    assert out.tolist() == [-1, K, K, 1, -1]
    assert ignore_crowd_anchors(labels, anchors, crowd, 0.2, K).tolist() == [-1, -1, K, 1, -1]
    positive_inside = torch.tensor([2, K, K, K, K])
    assert ignore_crowd_anchors(positive_inside, anchors, crowd, 0.5, K).tolist()[0] == 2
    assert torch.equal(ignore_crowd_anchors(labels, anchors, None, 0.5, K), labels)
    assert torch.equal(ignore_crowd_anchors(labels, anchors, Boxes(torch.zeros(0, 4)), 0.5, K),
                       labels)


def _cfg(enabled):
    cfg = get_tiny_cfg(num_classes=K)
    cfg.MODEL.FOCAL_DET.CROWD.ENABLED = enabled
    return cfg


def _crowd_batch(every_box_crowd=False):
    batch = random_batch(num_images=2, num_classes=K, size=(96, 128), seed=4)
    batch[0]["crowd_boxes"] = Boxes(torch.tensor([[0.0, 0.0, 64.0, 48.0]]))
    batch[1]["crowd_boxes"] = Boxes(torch.zeros(0, 4))
    if every_box_crowd:
        batch[0]["instances"] = batch[0]["instances"][:0]
    return batch


def _losses_and_labels(model, batch):
    seen = []
    real = model.label_anchors

    def recording(anchors, gt, crowd_boxes=None):
        out = real(anchors, gt, crowd_boxes)
        seen.append([x.clone() for x in out[0]])
        return out

    model.label_anchors = recording
    model.train()
    with EventStorage():
        losses = model(copy.deepcopy(batch))
    return {k: v.detach() for k, v in losses.items()}, seen[0]


def test_crowd_anchors_are_ignored_in_training():
    torch.manual_seed(0)
    on = build_model(_cfg(True))
    off = build_model(_cfg(False))
    off.load_state_dict(on.state_dict())
    batch = _crowd_batch()
    _, labels_on = _losses_and_labels(on, batch)
    _, labels_off = _losses_and_labels(off, batch)
    changed = labels_on[0] != labels_off[0]
    assert changed.any()
    assert (labels_on[0][changed] == -1).all() and (labels_off[0][changed] == K).all()
    assert torch.equal(labels_on[1], labels_off[1])  # no crowd in image 1


def test_with_the_key_on_and_no_crowds_training_is_unchanged():
    torch.manual_seed(0)
    on = build_model(_cfg(True))
    off = build_model(_cfg(False))
    off.load_state_dict(on.state_dict())
    batch = random_batch(num_images=2, num_classes=K, size=(96, 128), seed=5)
    a, _ = _losses_and_labels(on, batch)
    b, _ = _losses_and_labels(off, batch)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_image_whose_every_box_is_a_crowd_trains():
    torch.manual_seed(0)
    model = build_model(_cfg(True))
    losses, labels = _losses_and_labels(model, _crowd_batch(every_box_crowd=True))
    assert all(torch.isfinite(v) for v in losses.values())
    assert (labels[0] >= 0).sum() > 0 and (labels[0] == -1).any()
    assert not ((labels[0] >= 0) & (labels[0] < K)).any()  # no positive from a crowd box


def _coco(tmp_path):
    img = np.full((60, 80, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 60, "width": 80}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [40, 10, 20, 20],
                 "area": 400, "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 40],
                 "area": 1200, "iscrowd": 1}]}
    path = tmp_path / "crowd.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("flip", [False, True])
def test_mapper_keeps_crowd_boxes_from_a_coco_json_only_when_asked(tmp_path, flip):
    from detectron2.data import transforms as T
    from detectron2.data.datasets import load_coco_json

    dicts = load_coco_json(_coco(tmp_path), str(tmp_path), "crowd_test")
    augs = [T.RandomFlip(prob=1.0 if flip else 0.0, horizontal=True)]
    keep = FocalDatasetMapper(is_train=True, augmentations=augs, image_format="BGR",
                              keep_crowd=True)(copy.deepcopy(dicts[0]))
    drop = FocalDatasetMapper(is_train=True, augmentations=augs, image_format="BGR")(
        copy.deepcopy(dicts[0]))
    assert "crowd_boxes" not in drop
    assert len(keep["instances"]) == len(drop["instances"]) == 1  # the crowd is no object
    expected = [50.0, 0.0, 80.0, 40.0] if flip else [0.0, 0.0, 30.0, 40.0]
    assert keep["crowd_boxes"].tensor.tolist() == [expected]
    cfg = _cfg(True)
    cfg.DATASETS.TRAIN = ("crowd_test",)
    assert FocalDatasetMapper(cfg, True).keep_crowd and not FocalDatasetMapper(cfg, False).keep_crowd
