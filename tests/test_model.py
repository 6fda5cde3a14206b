"""FocalRetinaNet behaviour: configs build, training steps are finite (also with no GT and for
every loss), inference on odd sizes, prior at step 0, checkpoints, tracing, AMP dtypes."""
import copy
import glob
import os
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.export import TracingAdapter
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import focal_det
from focal_det.checkpoint import numpy_state
from focal_det.losses import registered_loss_names
from tests.common import CONFIGS, get_tiny_cfg, random_batch

ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


def _train_step(model, batch):
    model.train()
    with EventStorage():
        losses = model(copy.deepcopy(batch))
    total = sum(losses.values())
    total.backward()
    return losses


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_every_config_loads_and_builds(path):
    cfg = focal_det.get_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert type(model).__name__ == "FocalRetinaNet"
    assert len(model.head_in_features) == 5  # P3-P7
    a = cfg.MODEL.ANCHOR_GENERATOR  # the paper's 3 x 3, or a Table 1c variant
    assert model.anchor_generator.num_cell_anchors == [len(a.SIZES[0]) * len(a.ASPECT_RATIOS[0])] * 5


def test_paper_defaults():
    cfg = focal_det.get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, "retinanet_R50_FPN_1x.yaml"))
    r = cfg.MODEL.RETINANET
    assert (r.IOU_THRESHOLDS, r.IOU_LABELS) == ([0.4, 0.5], [0, -1, 1])
    assert (r.SCORE_THRESH_TEST, r.TOPK_CANDIDATES_TEST, r.NMS_THRESH_TEST) == (0.05, 1000, 0.5)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100 and r.NUM_CONVS == 4
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS) == (0.01, 90000,
                                                                         (60000, 80000))
    c = cfg.MODEL.FOCAL_DET.CLS_LOSS
    assert (c.NAME, c.GAMMA, c.ALPHA) == ("FocalLoss", 2.0, 0.25)


@pytest.mark.parametrize("empty", [False, True])
def test_one_training_step_is_finite(empty):
    model = build_model(get_tiny_cfg())
    losses = _train_step(model, random_batch(empty=empty))
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if empty:
        assert losses["loss_box_reg"].item() == 0.0


@pytest.mark.parametrize("name", ["FocalLoss", "FocalLossStar", "CrossEntropy",
                                  "BalancedCrossEntropy"])
def test_each_loss_trains_one_step_and_starts_at_the_prior(name):
    cfg = get_tiny_cfg()
    cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME = name
    cfg.MODEL.FOCAL_DET.HEAD.PRIOR_PROB = 0.02
    model = build_model(cfg)
    p0 = model.cls_loss.probs(model.head.cls_score.bias.detach().double())
    torch.testing.assert_close(p0, torch.full_like(p0, 0.02))
    before = model.head.cls_score.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = _train_step(model, random_batch(seed=4))
    opt.step()
    assert all(torch.isfinite(v) for v in losses.values())
    assert not torch.equal(before, model.head.cls_score.weight)


def test_zero_bias_init_is_the_no_prior_baseline():
    cfg = get_tiny_cfg()
    cfg.MODEL.FOCAL_DET.HEAD.BIAS_INIT = "Zero"
    assert (build_model(cfg).head.cls_score.bias == 0).all()


def test_head_weights_are_gaussian_001():
    model = build_model(get_tiny_cfg())
    w = torch.cat([model.head.cls_score.weight.flatten(), model.head.bbox_pred.weight.flatten()])
    assert abs(w.std().item() - 0.01) < 0.001 and (model.head.bbox_pred.bias == 0).all()


@pytest.mark.parametrize("size", [(61, 97), (129, 33), (32, 32)])
def test_inference_on_odd_image_sizes(size):
    model = build_model(get_tiny_cfg()).eval()
    batch = [{"image": torch.rand(3, *size) * 255}]
    with torch.no_grad():
        inst = model(batch)[0]["instances"]
    assert inst.image_size == size
    assert len(inst) <= 100 and torch.isfinite(inst.pred_boxes.tensor).all()


@pytest.mark.parametrize("normalizer", ["num_fg", "ema", "constant"])
def test_loss_normalizers(normalizer):
    cfg = get_tiny_cfg()
    cfg.MODEL.FOCAL_DET.LOSS_NORMALIZER = normalizer
    cfg.MODEL.FOCAL_DET.LOSS_NORMALIZER_VALUE = 7.5
    model = build_model(cfg)
    batch = random_batch(seed=5)
    losses = _train_step(model, batch)
    model.zero_grad()
    with EventStorage() as storage:
        model(copy.deepcopy(batch))
        num_fg = storage.latest()["num_pos_anchors"][0] * len(batch)
    expected = {"num_fg": num_fg, "ema": 0.9 * 100 + 0.1 * num_fg, "constant": 7.5}[normalizer]
    raw = model.cls_loss(*_logits_and_labels(model, batch))
    torch.testing.assert_close(losses["loss_cls"].detach(), raw / expected, rtol=1e-5, atol=0)


def _logits_and_labels(model, batch):
    with torch.no_grad():
        anchors, logits, _ = model.dense_outputs(model.preprocess_image(batch))
        labels, _ = model.label_anchors(anchors, [b["instances"] for b in batch])
    return torch.cat(logits, dim=1), torch.stack(labels)


@pytest.mark.parametrize("key,replacement", [
    ("FOCAL_LOSS_GAMMA", "MODEL.FOCAL_DET.CLS_LOSS.GAMMA"),
    ("FOCAL_LOSS_ALPHA", "MODEL.FOCAL_DET.CLS_LOSS.ALPHA"),
    ("PRIOR_PROB", "MODEL.FOCAL_DET.HEAD.PRIOR_PROB"),
])
def test_detectron2_loss_keys_are_refused_with_the_key_to_use(key, replacement):
    cfg = get_tiny_cfg()
    cfg.MODEL.RETINANET[key] = 0.5
    with pytest.raises(ValueError, match=f"MODEL.RETINANET.{key}.*{replacement}"):
        build_model(cfg)


def test_registry_names_listed():
    assert {"FocalLoss", "FocalLossStar", "CrossEntropy", "BalancedCrossEntropy"} <= set(
        registered_loss_names())


def test_checkpoints_load_in_pth_and_detectron2_pkl_formats(tmp_path):
    cfg = get_tiny_cfg()
    src = build_model(cfg)
    torch.save({"model": src.state_dict()}, tmp_path / "model.pth")
    with open(tmp_path / "model.pkl", "wb") as f:  # Detectron2 model-zoo format
        pickle.dump({"model": numpy_state(src), "__author__": "test"}, f)
    for name in ("model.pth", "model.pkl"):
        dst = build_model(cfg)
        info = DetectionCheckpointer(dst).load(str(tmp_path / name))
        incompatible = info.get("incompatible") if isinstance(info, dict) else None
        for k, v in src.state_dict().items():
            assert torch.equal(v, dst.state_dict()[k]), f"{name}: {k} not loaded"
        assert incompatible is None or not incompatible.missing_keys


def test_imagenet_style_backbone_pkl_loads_into_the_backbone(tmp_path):
    cfg = get_tiny_cfg()
    src = build_model(cfg)
    bottom_up = {k: v.detach().numpy() for k, v in src.backbone.bottom_up.state_dict().items()}
    with open(tmp_path / "R-18.pkl", "wb") as f:  # converted-backbone style: suffix matching
        pickle.dump({"model": bottom_up, "__author__": "test", "matching_heuristics": True}, f)
    dst = build_model(cfg)
    DetectionCheckpointer(dst).load(str(tmp_path / "R-18.pkl"))
    for k, v in src.backbone.bottom_up.state_dict().items():
        assert torch.equal(v, dst.backbone.bottom_up.state_dict()[k]), k


# Tracing is what this test is about: torch deprecates its API, and tracing Detectron2's and
# torchvision's code warns about Python control flow there (third-party code, not ours).
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_model_gives_the_eager_boxes():
    model = build_model(get_tiny_cfg()).eval()
    with torch.no_grad():
        model.head.cls_score.bias.fill_(0.0)  # enough detections to compare
    inputs = [{"image": torch.rand(3, 64, 96) * 255}]
    adapter = TracingAdapter(model, inputs)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    with torch.no_grad():
        eager = model(inputs)[0]["instances"]
        out = adapter.outputs_schema(traced(*adapter.flattened_inputs))[0]["instances"]
    assert len(eager) > 0
    torch.testing.assert_close(out.pred_boxes.tensor, eager.pred_boxes.tensor)
    torch.testing.assert_close(out.scores, eager.scores)
    # The trace must not bake data-dependent choices: with few anchors above the threshold
    # (the traced module shares the parameters), it still agrees with eager mode.
    with torch.no_grad():
        model.head.cls_score.bias.fill_(-4.0)
        eager = model(inputs)[0]["instances"]
        out = adapter.outputs_schema(traced(*adapter.flattened_inputs))[0]["instances"]
    assert 0 < len(eager) < 100 and (eager.scores > 0.05).all()
    assert len(out) == len(eager)
    torch.testing.assert_close(out.pred_boxes.tensor, eager.pred_boxes.tensor)
    torch.testing.assert_close(out.scores, eager.scores)


def test_autocast_bf16_losses_are_fp32_and_finite():
    model = build_model(get_tiny_cfg())
    model.train()
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(random_batch(seed=6))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def _many_boxes(n, size=256, seed=0):
    from detectron2.structures import Boxes

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * (size - 20)
    wh = torch.rand(n, 2, generator=g) * 60 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:5] = boxes[5:10]  # exact duplicates: ties between GT boxes
    return Boxes(boxes)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_matching_equals_detectron2_matcher(chunk):
    from detectron2.structures import pairwise_iou

    from focal_det.modeling.matching import match_in_chunks

    model = build_model(get_tiny_cfg())
    features = [torch.zeros(1, 1, 256 // s, 256 // s) for s in (8, 16, 32, 64, 128)]
    from detectron2.structures import Boxes

    anchors = Boxes.cat(model.anchor_generator(features))
    gt = _many_boxes(150)
    ref_idx, ref_labels = model.anchor_matcher(pairwise_iou(gt, anchors))
    idx, labels = match_in_chunks(model.anchor_matcher, gt, anchors, chunk)
    assert torch.equal(labels, ref_labels)
    assert torch.equal(idx[labels != 0], ref_idx[labels != 0])


def test_thousands_of_gt_boxes_match_in_bounded_memory(monkeypatch):
    """Memory is bounded because no IoU matrix has more than ``chunk`` GT rows: checked on the
    matrices themselves (deterministic), not on the process's RSS."""
    from detectron2.structures import Boxes

    from focal_det.modeling import matching

    model = build_model(get_tiny_cfg())
    features = [torch.zeros(1, 1, 512 // s, 512 // s) for s in (8, 16, 32, 64, 128)]
    anchors = Boxes.cat(model.anchor_generator(features))  # 45,000 anchors
    gt = _many_boxes(4000, size=512)  # full IoU matrix: 4000 x 45k x 4 B = 720 MB
    shapes = []
    real = matching.pairwise_iou

    def recording(a, b):
        out = real(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(matching, "pairwise_iou", recording)
    matching.match_in_chunks(model.anchor_matcher, gt, anchors, 64)
    assert len(shapes) == 4000 // 64 + 1  # every GT box was matched, 64 at a time
    assert max(rows for rows, _ in shapes) == 64 and {c for _, c in shapes} == {len(anchors)}


@pytest.mark.parametrize("key,value,match", [
    ("MODEL.RETINANET.IOU_THRESHOLDS", [0.5, 0.4], r"IOU_THRESHOLDS=\[0.5, 0.4\].*increasing"),
    ("MODEL.RETINANET.IOU_THRESHOLDS", [0.4, 1.5], r"IOU_THRESHOLDS.*\[0, 1\]"),
    ("MODEL.RETINANET.SCORE_THRESH_TEST", 1.5, r"SCORE_THRESH_TEST=1.5.*\[0.0, 1.0\]"),
    ("MODEL.RETINANET.SCORE_THRESH_TEST", -0.1, r"SCORE_THRESH_TEST=-0.1"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", [[32], [64], [128]], r"SIZES=.*3 entries.*5 levels"),
    ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[1.0], [2.0]], r"ASPECT_RATIOS=.*2 entries"),
    ("MODEL.FOCAL_DET.LOSS_NORMALIZER", "batch", r"LOSS_NORMALIZER='batch'.*num_fg.*ema"),
    ("MODEL.FOCAL_DET.MATCHER_CHUNK", 0, r"MATCHER_CHUNK=0"),
    ("MODEL.FOCAL_DET.LOSS_NORMALIZER", "constant", r"LOSS_NORMALIZER_VALUE > 0, got 0.0"),
    ("MODEL.FOCAL_DET.HEAD.BIAS_INIT", "Random", r"BIAS_INIT='Random'.*PriorProb"),
])
def test_invalid_configs_name_key_value_and_allowed(key, value, match):
    cfg = get_tiny_cfg()
    node = cfg
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


def test_keyword_defaults_are_the_config_defaults():
    """One default per knob: every FocalRetinaNet keyword with a default has the value
    from_config reads from focal_det's default keys, so keyword, LazyConfig and yaml builds
    agree (CHANNELS_LAST was True in the config and False as a keyword)."""
    import inspect

    from focal_det.modeling import FocalRetinaNet

    cfg = get_tiny_cfg()
    cfg.MODEL.FOCAL_DET = focal_det.get_cfg().MODEL.FOCAL_DET  # the defaults only
    from_cfg = FocalRetinaNet.from_config(cfg)
    defaults = {name: p.default for name, p in inspect.signature(FocalRetinaNet.__init__)
                .parameters.items() if p.default is not inspect.Parameter.empty}
    assert {"channels_last", "fold_norms", "matcher_chunk", "prior_prob"} <= defaults.keys()
    assert {k: from_cfg[k] for k in defaults} == defaults
