"""Detectron's (the paper's code) rules as FocalRetinaNet options, off by default: the
low-quality-match rule with a minimum IoU (``MODEL.FOCAL_DET.LOW_QUALITY_MATCH_MIN_IOU``) and the
width-preserving head init (``MODEL.FOCAL_DET.HEAD.WEIGHT_INIT``)."""
import math
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou

from focal_det.modeling.head_init import apply_head_weight_init
from focal_det.modeling.matching import MinIoUMatcher, match_in_chunks, with_low_quality_min_iou
from tests.common import CONFIGS, get_tiny_cfg


def _detectron_labels(iou: np.ndarray, pos=0.5, neg=0.4):
    """Detectron's ``roi_data/retinanet.py::_get_retinanet_blobs`` labelling, transcribed
    (anchors x GT IoU; class 1 for every GT): 1 positive, 0 negative, -1 ignored; and each
    anchor's GT."""
    labels = np.full(iou.shape[0], -1.0)
    anchor_to_gt_argmax = iou.argmax(axis=1)
    anchor_to_gt_max = iou[np.arange(iou.shape[0]), anchor_to_gt_argmax]
    gt_to_anchor_argmax = iou.argmax(axis=0)
    gt_to_anchor_max = iou[gt_to_anchor_argmax, np.arange(iou.shape[1])]
    anchors_with_max_overlap = np.where(iou == gt_to_anchor_max)[0]
    labels[anchors_with_max_overlap] = 1
    labels[anchor_to_gt_max >= pos] = 1
    labels[anchor_to_gt_max < neg] = 0  # written last: overwrites best anchors below 0.4
    return labels, anchor_to_gt_argmax


def _random_boxes(n, size, g, low=4, high=60):
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * (high - low) + low
    return Boxes(torch.cat([xy, xy + wh], dim=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_iou_matcher_is_detectrons_rule(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = _random_boxes(400, 200, g, 16, 80)
    gt = _random_boxes(12, 200, g, 4, 50)  # small boxes: many best anchors below 0.4
    iou = pairwise_iou(gt, anchors)
    idx, labels = MinIoUMatcher([0.4, 0.5], [0, -1, 1], 0.4)(iou)
    ref, ref_idx = _detectron_labels(iou.T.numpy())
    assert np.array_equal(labels.numpy(), ref)
    pos = labels.numpy() == 1
    assert np.array_equal(idx.numpy()[pos], ref_idx[pos])
    # Detectron2's rule differs exactly on the best anchors below 0.4
    _, d2 = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)(iou)
    changed = (d2 != labels).numpy()
    assert changed.any() and (d2.numpy()[changed] == 1).all()
    assert (iou.max(dim=0).values.numpy()[changed] < 0.4).all()


def test_min_iou_zero_is_detectron2s_matcher_itself():
    m = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    assert with_low_quality_min_iou(m, 0.0) is m
    g = torch.Generator().manual_seed(3)
    iou = pairwise_iou(_random_boxes(9, 200, g), _random_boxes(300, 200, g, 16, 80))
    a, b = m(iou), MinIoUMatcher([0.4, 0.5], [0, -1, 1], 0.0)(iou)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # the mask form = nonzero form
    with pytest.raises(ValueError, match="LOW_QUALITY_MATCH_MIN_IOU=1.5"):
        with_low_quality_min_iou(m, 1.5)


@pytest.mark.parametrize("chunk", [1, 5])
def test_chunked_matching_keeps_the_min_iou(chunk):
    g = torch.Generator().manual_seed(4)
    anchors, gt = _random_boxes(500, 200, g, 16, 80), _random_boxes(23, 200, g, 4, 50)
    matcher = MinIoUMatcher([0.4, 0.5], [0, -1, 1], 0.4)
    ref_idx, ref_labels = matcher(pairwise_iou(gt, anchors))
    idx, labels = match_in_chunks(matcher, gt, anchors, chunk)
    assert torch.equal(labels, ref_labels)
    assert torch.equal(idx[labels != 0], ref_idx[labels != 0])


def _low_iou_gt(model):
    """A GT box whose best anchor has an IoU of about 0.3 (0.2-0.4)."""
    features = [torch.zeros(1, 1, 256 // s, 256 // s) for s in (8, 16, 32, 64, 128)]
    anchors = model.anchor_generator(features)
    gt = Boxes(torch.tensor([[100.0, 100.0, 117.0, 117.0]]))
    best = pairwise_iou(gt, Boxes.cat(anchors)).max().item()
    assert 0.2 < best < 0.4, best
    inst = Instances((256, 256))
    inst.gt_boxes, inst.gt_classes = gt, torch.tensor([1])
    return anchors, inst


def test_gt_whose_best_anchor_has_iou_03_is_positive_only_with_detectron2s_rule():
    cfg = get_tiny_cfg()
    default = build_model(cfg)
    assert type(default.anchor_matcher) is Matcher  # default: Detectron2's, parity untouched
    cfg.MODEL.FOCAL_DET.LOW_QUALITY_MATCH_MIN_IOU = 0.4
    detectron = build_model(cfg)
    assert isinstance(detectron.anchor_matcher, MinIoUMatcher)
    anchors, inst = _low_iou_gt(default)
    (labels,), _ = default.label_anchors(anchors, [inst])
    assert (labels == 1).sum() >= 1  # Detectron2: its best anchor is positive at IoU 0.3
    (labels,), _ = detectron.label_anchors(anchors, [inst])
    assert (labels == 1).sum() == 0 and (labels == -1).sum() == 0  # Detectron: background
    assert (labels == cfg.MODEL.RETINANET.NUM_CLASSES).all()


def test_lazy_common_config_has_both_options_at_detectron2s_values():
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(CONFIGS, "lazy", "common", "focal_retinanet.py"))
    assert cfg.model.low_quality_min_iou == 0.0 and cfg.model.head_weight_init == "fixed"


def _head_weights(model):
    return {n: p.detach().clone() for n, p in model.head.named_parameters()
            if n.endswith("weight")}


def test_width_preserving_head_init_gives_each_conv_its_gain_at_256_channels():
    cfg = get_tiny_cfg()  # 32 channels in FPN and head
    torch.manual_seed(0)
    fixed = build_model(cfg)
    cfg.MODEL.FOCAL_DET.HEAD.WEIGHT_INIT = "width_preserving"
    torch.manual_seed(0)
    wide = build_model(cfg)
    a, b = _head_weights(fixed), _head_weights(wide)
    assert set(a) == set(b) and len(a) == 2 * cfg.MODEL.RETINANET.NUM_CONVS + 2
    for name in a:  # same draws, scaled by sqrt(256 / 32): std 0.01 * sqrt(8)
        assert torch.allclose(b[name], a[name] * math.sqrt(256 / 32)), name
    w = torch.cat([p.flatten() for p in b.values()])
    assert abs(w.std().item() - 0.01 * math.sqrt(8)) < 0.002
    # gain 0.01 * sqrt(9 * 256) = 0.48 whatever the width; biases untouched (the prior)
    for n, p in fixed.head.named_parameters():
        if n.endswith("bias"):
            assert torch.equal(p, dict(wide.head.named_parameters())[n])
    for conv in (m for m in wide.head.modules() if isinstance(m, torch.nn.Conv2d)):
        gain = conv.weight.std().item() * math.sqrt(9 * conv.in_channels)
        assert 0.4 < gain < 0.56


def test_width_preserving_is_the_identity_at_256_channels_and_names_bad_values():
    head = torch.nn.Sequential(torch.nn.Conv2d(256, 8, 3), torch.nn.Conv2d(256, 4, 3))
    before = [m.weight.clone() for m in head]
    apply_head_weight_init(head, "width_preserving")
    assert all(torch.equal(a, m.weight) for a, m in zip(before, head))
    with pytest.raises(ValueError, match="HEAD.WEIGHT_INIT='kaiming'.*fixed"):
        apply_head_weight_init(head, "kaiming")
