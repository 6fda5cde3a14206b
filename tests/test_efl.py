"""Equalized Focal Loss (focal_det.losses.efl): built from its keys and as a LazyConfig object;
bad keys named before training; s = 0 (and the first step) is exactly FL; the statistics are
|dL/dz| of the trained loss at the class conv's outputs (autograd's logit gradients, with the
normalizer, fp32 and bf16 autocast), added after each taken optimizer step, never from a
skipped or non-finite one; checkpoints hold them and refuse another class count naming both.
Export: tests/test_scripting.py and tests/test_export.py run EFL too."""
import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import focal_det
from focal_det.checkpoint import ClassCountMismatchError, FocalCheckpointer
from focal_det.engine import loss_state
from focal_det.kernels import use_backend
from focal_det.losses import EqualizedFocalLoss, FocalLoss, build_cls_loss
from tests.common import get_tiny_cfg, random_batch

K = 3


def _cfg(**keys):
    cfg = get_tiny_cfg(num_classes=K)
    cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME = "EqualizedFocalLoss"
    for k, v in keys.items():
        setattr(cfg.MODEL.FOCAL_DET.CLS_LOSS, k, v)
    return cfg


def _stepped(loss, k, seed=0):
    """``loss`` bound to k classes with uneven statistics (g from 0 to 1)."""
    loss.check_num_classes(k)
    g = torch.Generator().manual_seed(seed)
    loss._pending.copy_(torch.rand(2, k, generator=g) * torch.tensor([[1.0], [2.0]]))
    loss._ready = True  # as observe_normalizer leaves it
    loss.after_step()
    assert 0 < loss.pos_neg.min() < loss.pos_neg.max() <= 1
    return loss


def test_built_from_the_keys_and_as_a_lazy_object():
    cfg = _cfg(GAMMA=1.5, EFL_SCALE=4.0, ALPHA=0.5)
    loss = build_cls_loss(cfg)
    assert type(loss) is EqualizedFocalLoss
    assert (loss.gamma_b, loss.scale, loss.alpha) == (1.5, 4.0, 0.5)
    defaults = build_cls_loss(_cfg())
    assert (defaults.gamma_b, defaults.scale, defaults.alpha) == (2.0, 8.0, 0.25)  # official
    lazy = instantiate(L(EqualizedFocalLoss)(gamma_b=2.0, scale=8.0, alpha=0.25))
    assert (lazy.gamma_b, lazy.scale, lazy.alpha, lazy.num_classes) == (2.0, 8.0, 0.25, None)
    model = build_model(cfg)
    assert isinstance(model.cls_loss, EqualizedFocalLoss)
    assert model.cls_loss.num_classes == K
    assert {"cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg"} <= set(
        model.state_dict())
    assert (model.cls_loss.pos_neg == 1).all() and not model.cls_loss.pos_grad.any()


@pytest.mark.parametrize("keys,message", [
    ({"EFL_SCALE": -1.0}, r"MODEL.FOCAL_DET.CLS_LOSS.EFL_SCALE=-1.0 .*>= 0"),
    ({"EFL_SCALE": float("nan")}, r"EFL_SCALE=nan"),
    ({"GAMMA": 0.0}, r"MODEL.FOCAL_DET.CLS_LOSS.GAMMA=0.0 .*gamma_b.*> 0"),
    ({"GAMMA": -2.0}, r"CLS_LOSS.GAMMA=-2.0"),
    ({"ALPHA": 1.5}, r"alpha=1.5"),
    ({"ALPHA_PER_CLASS": [0.25, 0.25]}, r"ALPHA_PER_CLASS has 2 values.*K = 3"),
])
def test_bad_keys_are_refused_when_the_model_is_built_naming_the_key(keys, message):
    with pytest.raises(ValueError, match=message):
        build_model(_cfg(**keys))


def test_another_class_count_is_refused_naming_both():
    loss = EqualizedFocalLoss(num_classes=5)
    with pytest.raises(ValueError, match="K = 5 classes, but the model has K = 3"):
        loss.check_num_classes(3)


@pytest.mark.parametrize("backend", ["native", "triton", "reference"])
@pytest.mark.parametrize("trained", [False, True])
def test_s_zero_and_the_first_step_are_exactly_fl(backend, trained):
    """s = 0 is FL whatever the statistics; any s is FL before the first step (g = 1)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 500, K, generator=g) * 3
    labels = torch.randint(-1, K + 1, (2, 500), generator=g)
    efl = EqualizedFocalLoss(gamma_b=2.0, scale=0.0 if trained else 8.0, alpha=0.25)
    if trained:
        _stepped(efl, K)
    fl = FocalLoss(gamma=2.0, alpha=0.25)
    results = []
    for loss in (efl, fl):
        xx = x.clone().requires_grad_()
        with use_backend(backend):
            value = loss(xx, labels)
            value.backward()
            per = loss.per_anchor(x, labels)
        results.append((value.detach(), xx.grad, per))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_gamma_and_weight_follow_g():
    loss = _stepped(EqualizedFocalLoss(gamma_b=2.0, scale=8.0), 6, seed=3)
    expected = torch.clamp(loss.pos_grad / (loss.neg_grad + 1e-10), 0, 1)
    torch.testing.assert_close(loss.pos_neg, expected)
    torch.testing.assert_close(loss.class_gamma, 2.0 + 8.0 * (1 - expected))
    torch.testing.assert_close(loss.class_weight, loss.class_gamma / 2.0)
    spec = loss.spec()
    assert spec.class_gamma is loss.class_gamma and spec.class_weight is loss.class_weight


def _spy_logits(model):
    """Keeps each training forward's per-level logits (their .grad retained) and labels."""
    seen = []
    original = model.classification_loss

    def spy(pred_logits, gt_labels):
        for x in pred_logits:
            x.retain_grad()
        seen.append((pred_logits, gt_labels))
        return original(pred_logits, gt_labels)
    model.classification_loss = spy
    return seen


@pytest.mark.parametrize("amp", [False, True])
def test_statistics_are_autograds_logit_gradients_of_the_trained_loss(amp):
    """What the official backward hook sees at the class conv's outputs (every level, with the
    normalizer, alpha_t and the weights), here without a hook: fp32 and under bf16 autocast."""
    torch.manual_seed(0)
    model = build_model(_cfg())
    _stepped(model.cls_loss, K)  # uneven gamma_j and weights
    model.train()
    seen = _spy_logits(model)
    with EventStorage(), torch.autocast("cpu", torch.bfloat16, enabled=amp):
        losses = model(random_batch(2, K, seed=2))
    losses["loss_cls"].backward()
    (levels, labels), = seen
    assert levels[0].dtype == (torch.bfloat16 if amp else torch.float32)
    grad = torch.cat([x.grad for x in levels], dim=1).double().abs()  # (N, R, K)
    pos = labels[..., None] == torch.arange(K)
    expected = torch.stack([(grad * pos).sum((0, 1)), (grad * ~pos).sum((0, 1))]).float()
    got = model.cls_loss._pending
    assert (got > 0).all()
    rtol = 2e-2 if amp else 1e-5  # bf16: autograd's gradients are rounded, ours are not
    torch.testing.assert_close(got, expected, rtol=rtol, atol=1e-9)


def test_a_taken_step_adds_the_statistics_and_a_skipped_one_does_not():
    model = build_model(_cfg())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    assert loss_state.install(optimizer, model) == [model.cls_loss]
    efl = model.cls_loss
    with EventStorage():
        model(random_batch(2, K, seed=0))["loss_cls"].backward()
    step_sums = efl._pending.clone()
    assert step_sums.any() and not efl.pos_grad.any()
    optimizer.step()
    torch.testing.assert_close(efl.pos_grad, step_sums[0])
    torch.testing.assert_close(efl.neg_grad, step_sums[1])
    assert not efl._pending.any()
    optimizer.step()  # a step without a forward adds nothing
    torch.testing.assert_close(efl.pos_grad, step_sums[0])

    # a step the gradient scaler skips (inf gradient) calls no hook: nothing is added
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    with EventStorage():
        scaler.scale(model(random_batch(2, K, seed=1))["loss_cls"]).backward()
    next(model.parameters()).grad.fill_(float("inf"))
    before = (efl.pos_grad.clone(), efl.neg_grad.clone(), efl.pos_neg.clone())
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() < 4.0  # it did skip
    assert all(torch.equal(a, b) for a, b in zip(before, (efl.pos_grad, efl.neg_grad,
                                                          efl.pos_neg)))


def test_non_finite_sums_add_nothing():
    loss = _stepped(EqualizedFocalLoss(), K)
    before = loss.state_dict()
    loss._pending.copy_(torch.tensor([[1.0, float("nan"), 1.0], [1.0, 1.0, float("inf")]]))
    loss._ready = True
    loss.after_step()
    assert all(torch.equal(v, loss.state_dict()[k]) for k, v in before.items())
    assert not loss._pending.any()


def test_forwards_without_gradient_leave_the_step_alone():
    """E.g. PreciseBN's forwards under no_grad, or OHEM's per-anchor ranking."""
    loss = EqualizedFocalLoss(num_classes=K)
    x, labels = torch.randn(10, K), torch.randint(0, K + 1, (10,))
    loss(x.requires_grad_(), labels)
    loss.observe_normalizer(2.0)
    pending = loss._pending.clone()
    with torch.no_grad():
        loss(x, labels)
    loss.per_anchor(x, labels)
    loss.observe_normalizer(1.0)
    assert torch.equal(loss._pending, pending) and pending.any()


def test_checkpoints_hold_the_statistics_and_refuse_another_class_count(tmp_path):
    model = build_model(_cfg())
    _stepped(model.cls_loss, K)
    FocalCheckpointer(model, str(tmp_path)).save("efl")
    again = build_model(_cfg())
    FocalCheckpointer(again).load(str(tmp_path / "efl.pth"))
    for name in ("pos_grad", "neg_grad", "pos_neg", "class_gamma", "class_weight"):
        assert torch.equal(getattr(again.cls_loss, name), getattr(model.cls_loss, name)), name
    other = get_tiny_cfg(num_classes=5)
    other.MODEL.FOCAL_DET.CLS_LOSS.NAME = "EqualizedFocalLoss"
    with pytest.raises(ClassCountMismatchError, match=r"cls_loss.pos_grad holds the loss's "
                       r"statistics for 3 classes, but this model has 5"):
        FocalCheckpointer(build_model(other)).load(str(tmp_path / "efl.pth"))
    # FL weights (no statistics) load into EFL: the statistics start afresh
    fl_cfg = get_tiny_cfg(num_classes=K)
    FocalCheckpointer(build_model(fl_cfg), str(tmp_path)).save("fl")
    fresh = build_model(_cfg())
    FocalCheckpointer(fresh).load(str(tmp_path / "fl.pth"))
    assert (fresh.cls_loss.pos_neg == 1).all()


def test_forwards_that_no_step_commits_are_warned_about():
    """A trainer without the step hook would train plain FL silently; it is told instead.
    (A handler on the module's own logger: an earlier in-process train_net.py run stops
    focal_det's loggers from propagating to the root, where caplog listens.)"""
    from focal_det.losses import efl
    from tests.common import Records

    loss = EqualizedFocalLoss(num_classes=K)
    x, labels = torch.randn(10, K).requires_grad_(), torch.randint(0, K + 1, (10,))
    records = Records()
    efl.logger.addHandler(records)
    try:
        for _ in range(efl.WARN_UNCOMMITTED):
            loss(x, labels)
            loss.observe_normalizer(1.0)
    finally:
        efl.logger.removeHandler(records)
    assert any("loss_state.install(optimizer, model)" in r.getMessage()
               for r in records.records)
    loss.after_step()
    assert loss._uncommitted == 0 and loss.pos_grad.any()


def test_one_add_per_step_when_the_optimizer_runs_its_post_hooks_twice():
    """Detectron2's clipping optimizer is a subclass whose step() calls SGD's: both are wrapped,
    so the step post-hooks fire twice per step; the statistics must be added once."""
    loss = EqualizedFocalLoss(gamma_b=2.0, scale=4.0, alpha=0.25, num_classes=K)
    logits = torch.randn(6, K, requires_grad=True)
    labels = torch.tensor([0, 1, 2, K, K, -1])

    class Clipped(torch.optim.SGD):
        def step(self, closure=None):
            return super().step(closure)

    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # wraps SGD.step as in use
    w = torch.nn.Parameter(torch.zeros(1))
    opt = Clipped([w], lr=0.1)
    loss_state.install(opt, torch.nn.ModuleList([loss]))
    loss.train()
    value = loss(logits, labels)
    loss.observe_normalizer(1.0)
    expected = loss._pending.clone()
    value.backward()
    w.grad = torch.zeros(1)
    refreshes = []
    refresh = loss._refresh
    loss._refresh = lambda: (refreshes.append(1), refresh())
    opt.step()
    assert len(refreshes) == 1  # one add (one all_reduce under DDP), not one per hook call
    assert torch.equal(loss.pos_grad, expected[0]) and torch.equal(loss.neg_grad, expected[1])
