"""Every registered classification loss keeps the whole contract of
``focal_det.losses.ClassificationLoss``: logits per anchor, biases through every registered
bias initializer, probabilities, per-anchor loss, every reduction; the base class raises
NotImplementedError for what a loss must implement; nothing in focal_det probes a loss with
hasattr/getattr."""
import ast
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

import focal_det
from focal_det.bias_init import BIAS_INIT_REGISTRY, class_bias
from focal_det.losses import (CLS_LOSS_REGISTRY, REDUCTIONS, ClassificationLoss, build_cls_loss,
                              registered_loss_names)
from focal_det.losses.base import require_loss
from tests.common import get_tiny_cfg

K = 3
LOSSES = registered_loss_names()


def _loss(name):
    cfg = focal_det.get_cfg()
    cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME = name
    return build_cls_loss(cfg)


def _data(loss, rows=200, seed=0):
    """float64 logits (2, rows, C), labels (2, rows) with ignored rows, and the one-hot targets
    of the same labels without ignored rows (background: no class set; its own column where
    the loss has one)."""
    g = torch.Generator().manual_seed(seed)
    c = loss.num_logits(K)
    x = torch.randn(2, rows, c, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, K + 1, (2, rows), generator=g)
    ignored = labels.clone()
    ignored[:, ::5] = -1
    targets = F.one_hot(labels, K + 1)[..., :c].double()
    return x, ignored, labels, targets


def test_the_registry_holds_the_paper_family_and_softmax():
    assert {"FocalLoss", "FocalLossStar", "CrossEntropy", "BalancedCrossEntropy",
            "SoftmaxFocalLoss"} <= set(LOSSES)


@pytest.mark.parametrize("name", LOSSES)
def test_every_registered_loss_derives_from_the_contract(name):
    loss = _loss(name)
    assert isinstance(loss, ClassificationLoss)
    assert issubclass(CLS_LOSS_REGISTRY.get(name), ClassificationLoss)
    assert loss.num_logits(K) in (K, K + 1)
    loss.check_num_classes(K)  # built from the default cfg: fits any K
    assert isinstance(loss.probs_elementwise, bool)


@pytest.mark.parametrize("name", LOSSES)
def test_sum_is_the_sum_of_the_per_anchor_losses_and_ignores_ignored_rows(name):
    loss = _loss(name)
    x, labels, _, _ = _data(loss)
    xx = x.clone().requires_grad_()
    total = loss(xx, labels)
    assert total.dim() == 0 and total.dtype == torch.float64
    per = loss.per_anchor(x.clone().requires_grad_(), labels)
    assert per.shape == labels.shape and not per.requires_grad
    assert (per[labels < 0] == 0).all() and (per[labels >= 0] > 0).all()
    torch.testing.assert_close(per.sum(), total.detach(), rtol=1e-10, atol=0)
    total.backward()
    assert (xx.grad[labels < 0] == 0).all() and xx.grad.abs().sum() > 0
    level = [loss(x[:, :120], labels[:, :120]), loss(x[:, 120:], labels[:, 120:])]
    torch.testing.assert_close(level[0] + level[1], total.detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", LOSSES)
def test_every_reduction_agrees_in_value_and_gradient(name):
    loss = _loss(name)
    x, _, labels, targets = _data(loss, seed=1)
    grads, values = {}, {}
    for reduction in REDUCTIONS:
        xx = x.clone().requires_grad_()
        values[reduction] = out = loss.loss(xx, targets, reduction)
        (out.sum() if reduction == "none" else out).backward()
        grads[reduction] = xx.grad
    none = values["none"].detach()
    assert none.shape in (x.shape, labels.shape)  # per logit, or per row
    torch.testing.assert_close(values["sum"].detach(), none.sum(), rtol=1e-10, atol=0)
    torch.testing.assert_close(values["mean"].detach(), none.mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(values["sum"].detach(), loss(x, labels), rtol=1e-10, atol=0)
    torch.testing.assert_close(grads["none"], grads["sum"], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grads["mean"] * none.numel(), grads["sum"], rtol=1e-10,
                               atol=1e-14)
    with pytest.raises(ValueError, match="reduction='avg'"):
        loss.loss(x, targets, "avg")


@pytest.mark.parametrize("name", LOSSES)
def test_probabilities_are_class_scores_with_the_declared_form(name):
    loss = _loss(name)
    x, _, _, _ = _data(loss, rows=50)
    p = loss.probs(x)
    assert p.shape == (*x.shape[:-1], K) and (p >= 0).all() and (p <= 1).all()
    moved = x.clone()
    moved[..., -1] += 1.0  # another logit of the same anchor
    changed = (loss.probs(moved)[..., 0] != p[..., 0]).any()
    assert bool(changed) == (not loss.probs_elementwise)
    affine = loss.probs_affine()
    if affine is not None:
        assert loss.probs_elementwise
        torch.testing.assert_close(p, torch.sigmoid(x * affine[0] + affine[1]))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("prior", [0.01, 0.3])
def test_prior_bias_gives_the_prior_through_the_bias_initializers(name, prior):
    loss = _loss(name)
    bias = loss.prior_bias(prior, K)
    assert bias.shape == (loss.num_logits(K),)
    p = loss.probs(bias.double())
    if loss.probs_elementwise:  # each class starts at pi
        torch.testing.assert_close(p, torch.full((K,), prior, dtype=torch.float64))
    else:  # the K classes share pi
        assert p.sum().item() == pytest.approx(prior)
    torch.testing.assert_close(class_bias("PriorProb", loss, prior, K), bias)
    for init, _ in BIAS_INIT_REGISTRY:
        assert class_bias(init, loss, prior, K).shape == bias.shape


@pytest.mark.parametrize("name", LOSSES)
def test_the_model_takes_logits_count_and_biases_from_the_loss(name):
    cfg = get_tiny_cfg(num_classes=K)
    cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME = name
    model = build_model(cfg)
    c = model.cls_loss.num_logits(K)
    assert model.num_logits == c and model.head.cls_score.out_channels % c == 0
    expected = class_bias("PriorProb", model.cls_loss, cfg.MODEL.FOCAL_DET.HEAD.PRIOR_PROB, K)
    biases = model.head.cls_score.bias.detach().view(-1, c)
    assert (biases == expected.float()).all()


def test_the_base_class_raises_for_what_a_loss_must_implement():
    class Bare(ClassificationLoss):
        pass

    bare, x, labels = Bare(), torch.zeros(2, K), torch.zeros(2, dtype=torch.long)
    for call in (lambda: bare(x, labels), lambda: bare.per_anchor(x, labels),
                 lambda: bare.loss(x, x), lambda: bare.probs(x),
                 lambda: bare.prior_bias(0.01, K)):
        with pytest.raises(NotImplementedError, match="Bare must implement"):
            call()
    assert bare.num_logits(K) == K and bare.probs_affine() is None and bare.probs_elementwise
    bare.check_num_classes(K)


def test_a_loss_outside_the_contract_is_refused_by_name():
    @CLS_LOSS_REGISTRY.register()
    class NotALoss:
        def __init__(self, cfg):
            pass

    try:
        with pytest.raises(TypeError, match="NotALoss is not a focal_det.losses"):
            _loss("NotALoss")
    finally:
        CLS_LOSS_REGISTRY._obj_map.pop("NotALoss")
    with pytest.raises(TypeError, match="ClassificationLoss"):
        require_loss(lambda logits, labels: logits.sum())


def _probes_of_a_loss(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr") and node.args
                and "loss" in ast.unparse(node.args[0]).lower()):
            yield f"{path}:{node.lineno}: {ast.unparse(node)}"


def test_no_module_probes_a_loss_with_hasattr_or_getattr():
    root = os.path.dirname(focal_det.__file__)
    probes = [probe for folder, _, files in os.walk(root) for f in files if f.endswith(".py")
              for probe in _probes_of_a_loss(os.path.join(folder, f))]
    assert probes == []
