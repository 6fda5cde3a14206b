"""OHEM (MODEL.FOCAL_DET.SAMPLER.NAME OHEM, the paper's Table 1d): NMS suppresses overlapping
high-loss anchors, the 1:3 ratio holds, a minibatch larger than the candidates takes them all,
images without objects work, ignored anchors are never chosen, images do not suppress each
other; the model trains on the chosen anchors only, with their number as the normalizer; the
work does not grow with a Python loop over anchors; every Table 1d config loads."""
import copy
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_det import cli
from focal_det.modeling.sampling import OHEM, ohem_select
from focal_det.utils.op_count import count_ops
from tests.common import CONFIGS, get_tiny_cfg, random_batch


def _select(scores, boxes, valid=None, pos=None, b=2, nms=0.5, frac=-1.0, topk=100):
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.dim() == 1:
        scores = scores[None]
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else torch.as_tensor(valid)
    pos = torch.zeros_like(valid) if pos is None else torch.as_tensor(pos)
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    return ohem_select(scores, boxes, valid.view_as(scores), pos.view_as(scores), b, nms, frac,
                       topk)


BOXES = [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [40, 40, 50, 50]]


def test_nms_suppresses_overlapping_high_loss_anchors():
    chosen = _select([5.0, 4.0, 3.0, 1.0], BOXES, b=2)
    assert chosen.tolist() == [[True, False, True, False]]  # anchor 1 overlaps anchor 0
    # with a looser NMS both overlapping anchors survive
    assert _select([5.0, 4.0, 3.0, 1.0], BOXES, b=2, nms=0.9).tolist() == \
        [[True, True, False, False]]


def test_minibatch_larger_than_the_candidates_takes_every_survivor():
    assert _select([5.0, 4.0, 3.0, 1.0], BOXES, b=100).tolist() == [[True, False, True, True]]


def test_ignored_anchors_are_never_chosen():
    chosen = _select([9.0, 1.0, 3.0, 2.0], BOXES, valid=[False, True, True, True], b=3)
    assert chosen.tolist() == [[False, True, True, True]]  # 0 is ignored, so 1 is not suppressed


def test_ratio_1_to_3_holds():
    g = torch.Generator().manual_seed(0)
    n = 400
    xy = torch.rand(n, 2, generator=g) * 2000
    boxes = torch.cat([xy, xy + 8], 1)  # small, mostly disjoint
    scores = torch.rand(n, generator=g)
    pos = torch.rand(n, generator=g) < 0.5
    chosen = _select(scores, boxes, pos=pos, b=40, frac=0.25, topk=400)[0]
    assert chosen.sum() == 40 and (chosen & pos).sum() == 10  # 1 : 3
    few_pos = torch.zeros(n, dtype=torch.bool)
    few_pos[:3] = True
    chosen = _select(scores, boxes, pos=few_pos, b=40, frac=0.25, topk=400)[0]
    assert (chosen & few_pos).sum() == 3 and chosen.sum() == 40  # negatives fill the rest


def test_images_without_objects_and_images_do_not_suppress_each_other():
    scores = torch.tensor([[5.0, 4.0, 3.0, 1.0], [5.0, 4.0, 3.0, 1.0]])
    chosen = _select(scores, BOXES, b=2, frac=0.25)
    assert chosen.tolist() == [[True, False, True, False]] * 2  # no positives: negatives only


def _model(**ohem):
    cfg = get_tiny_cfg()
    cfg.MODEL.FOCAL_DET.SAMPLER.NAME = "OHEM"
    cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME = "CrossEntropy"
    for k, v in ohem.items():
        cfg.MODEL.FOCAL_DET.SAMPLER.OHEM[k] = v
    torch.manual_seed(0)
    return build_model(cfg)


def test_model_trains_on_the_chosen_anchors_over_their_number():
    model = _model(BATCH_SIZE_PER_IMAGE=32)
    assert isinstance(model.anchor_sampler, OHEM)
    batch = random_batch(num_images=2, num_classes=3, size=(96, 128), empty=False)
    captured = {}
    real = model.classification_loss

    def spy(pred_logits, labels):
        captured["labels"] = labels.clone()
        return real(pred_logits, labels)

    model.classification_loss = spy
    model.train()
    with EventStorage():
        losses = model(copy.deepcopy(batch))
    assert all(torch.isfinite(v) for v in losses.values())
    chosen = captured["labels"] >= 0
    assert 0 < chosen.sum(1).max() <= 32  # per image
    with torch.no_grad():
        anchors, logits, _ = model.dense_outputs(model.preprocess_image(batch))
        raw = real(logits, captured["labels"])
    torch.testing.assert_close(losses["loss_cls"].detach(), raw / chosen.sum(), rtol=1e-5,
                               atol=0)
    losses["loss_cls"].backward()  # gradients flow


def test_selection_work_does_not_grow_with_the_anchors():
    """Dispatched ops are the same for 2,000 and 20,000 anchors: no per-anchor Python loop."""
    def ops(r):
        g = torch.Generator().manual_seed(1)
        xy = torch.rand(r, 2, generator=g) * 1000
        boxes = torch.cat([xy, xy + 32], 1)
        scores = torch.rand(2, r, generator=g)
        valid = torch.rand(2, r, generator=g) > 0.1
        pos = torch.rand(2, r, generator=g) < 0.01
        return count_ops(lambda: ohem_select(scores, boxes, valid, pos, 128, 0.5, 0.25,
                                             1024)).ops

    assert ops(2000) == ops(20000)


def test_bad_ohem_keys_are_named():
    with pytest.raises(ValueError, match="PRE_NMS_TOPK=64.*BATCH_SIZE_PER_IMAGE"):
        _model(BATCH_SIZE_PER_IMAGE=128, PRE_NMS_TOPK=64)
    with pytest.raises(ValueError, match="NMS_THRESH=1.5"):
        _model(NMS_THRESH=1.5)
    cfg = get_tiny_cfg()
    cfg.MODEL.FOCAL_DET.SAMPLER.NAME = "Random"
    with pytest.raises(ValueError, match="SAMPLER.NAME='Random'.*OHEM"):
        build_model(cfg)


def test_every_table_1d_config_loads():
    rows = {}
    for path in glob.glob(os.path.join(CONFIGS, "paper", "table1d", "retinanet_*.yaml")):
        cfg = cli.load_yaml_config(path)
        assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.INPUT.MIN_SIZE_TEST == 600
        s = cfg.MODEL.FOCAL_DET.SAMPLER
        if s.NAME == "OHEM":
            assert cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME == "CrossEntropy"
            rows[(s.OHEM.BATCH_SIZE_PER_IMAGE, s.OHEM.NMS_THRESH,
                  s.OHEM.POSITIVE_FRACTION)] = path
        else:
            assert cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME == "FocalLoss"
            rows["FL"] = path
    expected = {(b, n, -1.0) for b in (128, 256, 512) for n in (0.5, 0.7)}
    expected |= {(b, 0.5, 0.25) for b in (128, 256, 512)} | {"FL"}
    assert set(rows) == expected


def test_the_sampler_gets_the_batch_as_arguments_not_the_model():
    """select() takes anchors, labels, K and a per-anchor loss callable; OHEM asks it for the
    box term as BOX_LOSS says."""
    asked = []

    def anchor_loss(with_box):
        asked.append(with_box)
        return torch.tensor([[5.0, 4.0, 3.0, 1.0]])

    labels = torch.tensor([[0, 3, 3, -1]])
    for box_loss in (True, False):
        chosen = OHEM(batch_size_per_image=2, pre_nms_topk=4, box_loss=box_loss).select(
            torch.tensor(BOXES, dtype=torch.float32), labels, 3, anchor_loss)
        assert chosen.tolist() == [[True, False, True, False]]
    assert asked == [True, False]
