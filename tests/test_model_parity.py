"""FocalRetinaNet equals Detectron2's RetinaNet (FL, gamma 2, alpha .25, EMA normalizer):
same parameter names, losses, gradients and detections from the same weights and batch."""
import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_det.modeling import FocalRetinaNet
from tests.common import get_tiny_cfg, random_batch


def _pair(num_classes, seed):
    cfg = get_tiny_cfg(num_classes)
    torch.manual_seed(seed)
    ours = build_model(cfg)
    d2_cfg = cfg.clone()
    d2_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    theirs = build_model(d2_cfg)
    assert isinstance(ours, FocalRetinaNet) and type(theirs).__name__ == "RetinaNet"
    with torch.no_grad():  # non-trivial weights, so that many anchors score above 0.05
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        theirs.head.cls_score.bias.fill_(-1.0)
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours, theirs


def _losses_and_grads(model, batch):
    model.train()
    model.zero_grad()
    with EventStorage():
        losses = model(copy.deepcopy(batch))
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("num_classes,seed,size", [(3, 0, (96, 128)), (7, 1, (80, 112))])
def test_training_losses_and_gradients_match_detectron2(num_classes, seed, size):
    ours, theirs = _pair(num_classes, seed)
    batch = random_batch(2, num_classes, size=size, seed=seed)
    l_ours, g_ours = _losses_and_grads(ours, batch)
    l_theirs, g_theirs = _losses_and_grads(theirs, batch)
    assert l_ours.keys() == l_theirs.keys() == {"loss_cls", "loss_box_reg"}
    for k in l_ours:
        torch.testing.assert_close(l_ours[k], l_theirs[k], rtol=1e-5, atol=0)
    assert g_ours.keys() == g_theirs.keys()
    for name in g_ours:
        scale = g_theirs[name].abs().max().clamp_min(1e-12)
        err = (g_ours[name] - g_theirs[name]).abs().max() / scale
        assert err < 1e-4, f"{name}: relative gradient error {err:.2e}"


def test_eval_detections_match_detectron2():
    ours, theirs = _pair(5, 2)
    batch = random_batch(2, 5, size=(90, 123), seed=2)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        out_ours = ours(copy.deepcopy(batch))
        out_theirs = theirs(copy.deepcopy(batch))
    total = 0
    for a, b in zip(out_ours, out_theirs):
        a, b = a["instances"], b["instances"]
        assert len(a) == len(b)
        total += len(a)
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=1e-3)
        assert torch.equal(a.pred_classes, b.pred_classes)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
    assert total > 0, "the comparison must cover some detections"
