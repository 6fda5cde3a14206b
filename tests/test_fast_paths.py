"""The speed paths of FocalRetinaNet give the same results as the plain ones: norm folding
(reversible, invisible in state_dict, tracks weight changes), batched top-k-first decoding
(identical to Detectron2's per-level decoding) and channels-last."""
import copy

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.utils.events import EventStorage

from focal_det.modeling.fold import FoldedNormConv2d, fold_norms, unfold_norms
from focal_det.modeling.retinanet import decode_detections
from tests.common import get_tiny_cfg, random_batch


def _model(norm="FrozenBN", fold=True, channels_last=False, seed=0):
    """Built without channels-last, converted after the weights are set: in-place random
    fills follow memory order, so they would give other weights in channels-last."""
    cfg = get_tiny_cfg(3)
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.FOCAL_DET.FOLD_NORMS = fold
    cfg.MODEL.FOCAL_DET.CHANNELS_LAST = False
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():  # non-identity norms, so that folding has something to fold
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model


def _rel_close(a, b, rtol):
    scale = b.abs().max().clamp_min(1e-12)
    assert (a - b).abs().max() / scale < rtol


def _features(model, images):
    with torch.no_grad():
        return model.backbone(images)


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_folding_matches_unfolded_and_is_reversible(norm):
    folded = _model(norm)
    plain = copy.deepcopy(folded)
    assert unfold_norms(plain) > 0
    assert not any(isinstance(m, FoldedNormConv2d) for m in plain.modules())
    n_folded = sum(isinstance(m, FoldedNormConv2d) for m in folded.modules())
    assert n_folded == 20  # R18: stem + 16 block convs + 3 shortcuts
    assert folded.state_dict().keys() == plain.state_dict().keys()
    for k, v in folded.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k]), k
    folded.eval(), plain.eval()
    x = torch.rand(1, 3, 64, 96) * 255
    a, b = _features(folded, x), _features(plain, x)
    for k in b:
        _rel_close(a[k], b[k], 1e-5)
    # unfold -> exactly the plain model again
    assert unfold_norms(folded) == n_folded
    c = _features(folded, x)
    for k in b:
        assert torch.equal(c[k], b[k])


def test_folded_cache_follows_load_state_dict_and_to():
    """DefaultPredictor calls eval() before loading weights: the folded weights must follow."""
    model = _model("FrozenBN").eval()
    x = torch.rand(1, 3, 64, 64) * 255
    _features(model, x)  # fills the caches with the initial weights
    other = _model("FrozenBN", seed=1)
    model.load_state_dict(other.state_dict())
    reference = copy.deepcopy(other).eval()
    unfold_norms(reference)
    a, b = _features(model, x), _features(reference, x)
    for k in b:
        _rel_close(a[k], b[k], 1e-5)
    model.to(torch.float64)
    a = _features(model, x.double())
    for k in b:
        assert a[k].dtype == torch.float64
        _rel_close(a[k].float(), b[k], 1e-5)


def test_folded_frozen_bn_trains_with_the_same_gradients():
    folded = _model("FrozenBN")
    plain = copy.deepcopy(folded)
    unfold_norms(plain)
    batch = random_batch(2, 3, size=(64, 96), seed=1)
    grads = []
    for model in (folded, plain):
        model.train()
        with EventStorage():
            losses = model(copy.deepcopy(batch))
        sum(losses.values()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    assert any("bottom_up" in n for n in grads[0])  # trainable FrozenBN stages are covered
    for n in grads[1]:
        _rel_close(grads[0][n], grads[1][n], 1e-4)


def test_bn_is_not_folded_in_training_mode():
    conv = Conv2d(3, 4, 3, padding=1, norm=torch.nn.BatchNorm2d(4))
    fold_norms(torch.nn.Sequential(conv))
    assert isinstance(conv, FoldedNormConv2d)
    conv.train()
    x = torch.randn(2, 3, 8, 8)
    out = conv(x)
    # batch statistics were used (and updated): per-channel mean ~0, var ~1
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert conv.norm.num_batches_tracked.item() == 1


def test_channels_last_config_switch():
    cfg = get_tiny_cfg(3)
    assert cfg.MODEL.FOCAL_DET.CHANNELS_LAST  # default on (benchmarks/bench_model.py)
    model = build_model(cfg)
    assert model.backbone.bottom_up.stem.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)
    images = model.preprocess_image([{"image": torch.rand(3, 64, 96) * 255}])
    assert images.tensor.is_contiguous(memory_format=torch.channels_last)
    cfg.MODEL.FOCAL_DET.CHANNELS_LAST = False
    model = build_model(cfg)
    assert model.backbone.bottom_up.stem.conv1.weight.is_contiguous()


def test_channels_last_gives_the_same_detections():
    a = _model("FrozenBN", channels_last=False).eval()
    b = _model("FrozenBN", channels_last=True).eval()
    assert b.backbone.bottom_up.stem.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)
    batch = [{"image": d["image"]} for d in random_batch(1, 3, size=(64, 96), seed=3)]
    with torch.no_grad():
        fa, fb = _features(a, batch[0]["image"][None]), a(batch)[0]["instances"]
        ga, gb = _features(b, batch[0]["image"][None]), b(batch)[0]["instances"]
    for k in fa:
        _rel_close(ga[k], fa[k], 1e-5)
    assert len(fb) == len(gb)
    torch.testing.assert_close(gb.pred_boxes.tensor, fb.pred_boxes.tensor, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("topk,thresh,classes", [
    (50, 0.05, 4), (1000, 0.05, 4), (7, 0.3, 4), (50, 0.999, 4),
    (20, 0.05, 80), (1000, 0.02, 80), (3, 0.8, 80), (100, 0.6, 80)])
def test_batched_decoding_equals_detectron2_per_level_decoding(topk, thresh, classes):
    """Random distinct logits over 3 levels, 2 images: same boxes, scores, classes and order
    as Detectron2's RetinaNet.inference_single_image. The settings cover levels with fewer
    passing scores than k, more passing anchors than k (the k best anchors are preselected),
    and more passing scores than k among few anchors (many classes per anchor)."""
    g = torch.Generator().manual_seed(topk * 100 + classes)
    gen = DefaultAnchorGenerator(sizes=[[16], [32], [64]], aspect_ratios=[[0.5, 1.0, 2.0]],
                                 strides=[8, 16, 32], offset=0.0)
    feats = [torch.zeros(2, 1, 12, 16), torch.zeros(2, 1, 6, 8), torch.zeros(2, 1, 3, 4)]
    anchors = gen(feats)
    logits = [torch.randn(2, len(a), classes, generator=g) * 2 - 2 for a in anchors]
    deltas = [torch.randn(2, len(a), 4, generator=g) * 0.3 for a in anchors]
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    sizes = [(96, 128), (90, 100)]
    ours = decode_detections(anchors, logits, deltas, sizes, probs=torch.sigmoid,
                             box2box_transform=transform, score_thresh=thresh,
                             topk_candidates=topk, nms_thresh=0.5, max_detections=100)
    d2 = RetinaNet.__new__(RetinaNet)  # only the attributes its decoding reads
    torch.nn.Module.__init__(d2)
    d2.box2box_transform, d2.test_score_thresh, d2.test_topk_candidates = transform, thresh, topk
    d2.test_nms_thresh, d2.max_detections_per_image = 0.5, 100
    for i, size in enumerate(sizes):
        ref = d2.inference_single_image(anchors, [x[i].sigmoid() for x in logits],
                                        [x[i] for x in deltas], size)
        assert len(ours[i]) == len(ref)
        assert torch.equal(ours[i].pred_classes, ref.pred_classes)
        # sigmoid of k candidates vs of the whole level: other SIMD lanes, so up to 1 ulp
        torch.testing.assert_close(ours[i].scores, ref.scores, rtol=2e-7, atol=0)
        torch.testing.assert_close(ours[i].pred_boxes.tensor, ref.pred_boxes.tensor, rtol=0,
                                   atol=1e-5)
    if thresh < 0.5:
        assert sum(len(r) for r in ours) > 0


def test_channels_last_training_is_the_same_computation_in_float64():
    """Same losses and gradients with and without channels-last, in float64 (in float32 the
    different summation order shows up, amplified by this random net's BN backward)."""
    results = []
    for channels_last in (False, True):
        model = _model("BN").to(torch.float64)
        if channels_last:
            model.to(memory_format=torch.channels_last)
            model.channels_last = True
        batch = random_batch(2, 3, size=(64, 96), seed=4)
        for b in batch:
            b["image"] = b["image"].double()
        model.train()
        with EventStorage():
            losses = model(batch)
        sum(losses.values()).backward()
        results.append((losses, {n: p.grad for n, p in model.named_parameters()
                                 if p.grad is not None}))
    (la, ga), (lb, gb) = results
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-10, atol=0)
    assert ga.keys() == gb.keys()
    for n in ga:
        _rel_close(gb[n], ga[n], 1e-10)
