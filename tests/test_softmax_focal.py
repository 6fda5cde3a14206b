"""Softmax focal loss (Detectron's RETINANET.SOFTMAX): value and gradient equal the float64
definition with autograd; Detectron's bias rule; the model predicts K + 1 logits, trains, scores
with the softmax without background (the same detections as a plain decode), exports by
tracing; scripting is refused with a reason; sigmoid and softmax weights never load into each
other, naming both shapes."""
import copy
import warnings

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_det.checkpoint import ClassCountMismatchError, FocalCheckpointer
from focal_det.losses import SoftmaxFocalLoss, build_cls_loss
from tests.common import get_tiny_cfg, random_batch

K = 3


def _float64(x, labels, gamma, alpha):
    x = x.double().detach().requires_grad_()
    valid = labels >= 0
    y = labels.clamp_min(0)
    logp = torch.log_softmax(x, -1)
    lp_t = logp.gather(-1, y[:, None])[:, 0]
    a_t = torch.where(y == x.shape[1] - 1, 1 - alpha, alpha) if alpha >= 0 else 1.0
    loss = (-(a_t * (1 - lp_t.exp()) ** gamma * lp_t) * valid).sum()
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.0, -1.0), (0.5, 0.75), (5.0, 0.25)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient_equal_the_float64_definition(gamma, alpha, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(700, K + 1, generator=g) * 5).to(dtype)
    labels = torch.randint(0, K + 1, (700,), generator=g)
    labels[::7] = -1
    ref, ref_grad = _float64(x, labels, gamma, alpha)
    xx = x.clone().requires_grad_()
    loss = SoftmaxFocalLoss(gamma=gamma, alpha=alpha)(xx, labels)
    loss.backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=0)
    torch.testing.assert_close(xx.grad.double(), ref_grad, rtol=tol * 10, atol=tol)
    assert (xx.grad[labels < 0] == 0).all()
    per = SoftmaxFocalLoss(gamma=gamma, alpha=alpha).per_anchor(x, labels)
    torch.testing.assert_close(per.sum().double(), ref, rtol=tol, atol=0)


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_unreduced_loss_has_the_closed_form_gradient_of_each_row(gamma):
    """loss(..., "none"): one term per row, each with its own row's closed-form gradient; no
    NaN where p_t is exactly 1 (autograd through q^gamma, gamma < 1, would give one)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, K + 1, generator=g, dtype=torch.float64) * 3
    x[0] = torch.tensor([800.0, 0.0, 0.0, 0.0])  # p_t == 1 exactly
    labels = torch.randint(0, K + 1, (40,), generator=g)
    labels[0] = 0
    targets = torch.nn.functional.one_hot(labels, K + 1).double()
    weights = torch.rand(40, generator=g, dtype=torch.float64)
    ref, _ = _float64(x, labels, gamma, 0.25)
    xx = x.clone().requires_grad_()
    rows = SoftmaxFocalLoss(gamma=gamma, alpha=0.25).loss(xx, targets, "none")
    assert rows.shape == (40,)
    torch.testing.assert_close(rows.sum(), ref, rtol=1e-12, atol=0)
    (rows * weights).sum().backward()
    assert torch.isfinite(xx.grad).all()
    per_row = torch.stack([_float64(x[i:i + 1], labels[i:i + 1], gamma, 0.25)[1][0]
                           for i in range(1, 40)])
    torch.testing.assert_close(xx.grad[1:], per_row * weights[1:, None], rtol=1e-9, atol=1e-12)
    assert xx.grad[0].abs().max() == 0


def test_gradcheck_float64():
    x = torch.randn(20, K + 1, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(-1, K + 1, (20,))
    assert torch.autograd.gradcheck(lambda t: SoftmaxFocalLoss()(t, labels), (x,))


def test_detectron_bias_rule_through_the_bias_initializers():
    from focal_det.bias_init import class_bias

    loss = SoftmaxFocalLoss()
    bias = class_bias("PriorProb", loss, 0.01, 80)
    assert bias.shape == (81,) and bias[:80].abs().max() == 0
    assert bias[80].item() == pytest.approx(torch.tensor(80 * 0.99 / 0.01).log().item())
    p = torch.softmax(bias.double(), 0)
    assert p[80].item() == pytest.approx(0.99) and p[:80].sum().item() == pytest.approx(0.01)
    zero = class_bias("Zero", loss, 0.01, 80)
    assert zero.shape == (81,) and zero.abs().max() == 0


def _cfg(name="SoftmaxFocalLoss"):
    cfg = get_tiny_cfg(num_classes=K)
    cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME = name
    return cfg


def test_model_trains_and_scores_with_softmax_without_background():
    torch.manual_seed(0)
    model = build_model(_cfg())
    assert isinstance(model.cls_loss, SoftmaxFocalLoss) and model.num_logits == K + 1
    assert model.head.cls_score.out_channels == 9 * (K + 1)
    batch = random_batch(num_images=2, num_classes=K, size=(96, 128))
    model.train()
    with EventStorage():
        losses = model(copy.deepcopy(batch))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.no_grad():  # a model that detects something
        model.head.cls_score.bias.view(-1, K + 1)[:, K] = 0.0
        model.head.cls_score.weight.normal_(0, 0.05)
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}])[0]["instances"]
        anchors, logits, deltas = model.dense_outputs(model.preprocess_image(batch[:1]))
        scores = torch.cat([torch.softmax(x[0], -1)[:, :K] for x in logits])
    assert len(out) > 0
    assert out.scores.max().item() == pytest.approx(scores.max().item(), rel=1e-6)
    assert ((out.scores[:, None] - scores.flatten()[None]).abs().min(1).values < 1e-6).all()


def test_tracing_export_equals_eager_and_scripting_is_refused():
    from detectron2.export import TracingAdapter

    from focal_det.modeling.scripting import script_model

    torch.manual_seed(0)
    model = build_model(_cfg()).eval()
    with torch.no_grad():
        model.head.cls_score.bias.view(-1, K + 1)[:, K] = 0.0
    image = torch.rand(3, 64, 64) * 255
    adapter = TracingAdapter(model, [{"image": image}])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # as tools/export_model.py
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        eager = model([{"image": image}])[0]["instances"]
        boxes, classes, scores, _ = traced(image)
    assert len(scores) == len(eager)
    torch.testing.assert_close(scores.sort().values, eager.scores.sort().values, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(Exception, match="probs"):
        script_model(model)


def test_sigmoid_and_softmax_weights_never_load_into_each_other(tmp_path):
    torch.manual_seed(0)
    sig, soft = build_model(_cfg("FocalLoss")), build_model(_cfg())
    (tmp_path / "sig").mkdir(), (tmp_path / "soft").mkdir()
    FocalCheckpointer(sig, str(tmp_path / "sig")).save("model")
    FocalCheckpointer(soft, str(tmp_path / "soft")).save("model")
    with pytest.raises(ClassCountMismatchError, match=r"\(36, 32, 3, 3\) is sigmoid.*"
                       r"\(36, 32, 3, 3\) is softmax|\(27, 32, 3, 3\) is sigmoid.*\(36"):
        FocalCheckpointer(soft).load(str(tmp_path / "sig" / "model.pth"))
    with pytest.raises(ClassCountMismatchError, match=r"is softmax.*this model's .* is sigmoid"):
        FocalCheckpointer(sig).load(str(tmp_path / "soft" / "model.pth"))
    # a sigmoid model for K + 1 classes has the softmax head's shape: still refused
    torch.manual_seed(0)
    sig4 = build_model(get_tiny_cfg(num_classes=K + 1))
    with pytest.raises(ClassCountMismatchError, match="softmax"):
        FocalCheckpointer(sig4).load(str(tmp_path / "soft" / "model.pth"))
    # a checkpoint without our metadata (Detectron2's RetinaNet) with a sigmoid K-class head
    torch.save({"model": sig.state_dict()}, tmp_path / "d2.pth")
    with pytest.raises(ClassCountMismatchError, match="sigmoid"):
        FocalCheckpointer(soft).load(str(tmp_path / "d2.pth"))
    FocalCheckpointer(build_model(_cfg())).load(str(tmp_path / "soft" / "model.pth"))  # fine


def test_config_builds_it_and_rejects_per_class_alpha():
    cfg = _cfg()
    assert isinstance(build_cls_loss(cfg), SoftmaxFocalLoss)
    cfg.MODEL.FOCAL_DET.CLS_LOSS.ALPHA_PER_CLASS = [0.2, 0.3, 0.4]
    with pytest.raises(ValueError, match="ALPHA_PER_CLASS is for the sigmoid losses"):
        build_cls_loss(cfg)
    with pytest.raises(ValueError, match="GAMMA=-1"):
        SoftmaxFocalLoss(gamma=-1)
