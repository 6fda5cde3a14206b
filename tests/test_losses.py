"""The loss family: agreement with torchvision/fvcore, closed-form gradients (Appendix B),
gradcheck, stability, AMP dtypes, registry behaviour and errors that name the config key."""
import math

import pytest
import torch
from fvcore.nn import sigmoid_focal_loss as fv_focal
from fvcore.nn import sigmoid_focal_loss_star as fv_star
from torchvision.ops import sigmoid_focal_loss as tv_focal

import focal_det
from focal_det.bias_init import BIAS_INIT_REGISTRY, class_bias
from focal_det.losses import (
    CLS_LOSS_REGISTRY,
    build_cls_loss,
    sigmoid_balanced_cross_entropy,
    sigmoid_cross_entropy,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
)

REDUCTIONS = ["none", "mean", "sum"]


@pytest.fixture(autouse=True, params=["native", "triton", "reference"])
def backend(request):
    """Every test here runs on every loss backend: the C++ operator, the Triton kernel (in
    Triton's interpreter on CPU) and the plain-PyTorch reference."""
    from focal_det.kernels import use_backend

    with use_backend(request.param):
        yield request.param


def _inputs(shape=(300, 7), scale=3.0, seed=0, soft=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * scale).to(dtype)
    t = torch.rand(shape, generator=g) if soft else (torch.rand(shape, generator=g) < 0.2).float()
    return x, t.to(dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("soft", [False, True])
def test_focal_loss_matches_torchvision_and_fvcore(reduction, alpha, soft):
    x, t = _inputs(soft=soft)
    ours = sigmoid_focal_loss(x, t, gamma=2.0, alpha=alpha, reduction=reduction)
    tv = tv_focal(x, t, alpha=alpha, gamma=2.0, reduction=reduction)
    fv = fv_focal(x, t, alpha=alpha, gamma=2.0, reduction=reduction)
    # Elementwise, torchvision's 1 - p_t cancels for confident logits; tiny values differ in
    # relative terms but not in absolute ones.
    torch.testing.assert_close(ours, tv, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours, fv, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_focal_loss_is_closer_to_float64_than_torchvision(gamma):
    """Relative to the value plus one rounding step of x: the CE term is rounded as torch's
    BCE rounds it ((1 - t) x - log_sigmoid(x), so FL never exceeds torch's BCE), which costs
    easy negatives' loss values below ulp(x); the modulating factor is exact (torchvision's
    1 - p_t cancels)."""
    x, t = _inputs(scale=6.0)
    exact = tv_focal(x.double(), t.double(), gamma=gamma, reduction="none")
    ours = sigmoid_focal_loss(x, t, gamma=gamma, reduction="none").double()
    tv = tv_focal(x, t, gamma=gamma, reduction="none").double()
    step = torch.finfo(torch.float32).eps * x.double().abs()  # one rounding step of x
    err_ours, err_tv = (ours - exact).abs(), (tv - exact).abs()
    assert (err_ours <= 1e-5 * exact.abs() + step).all()
    rounding = 4 * torch.finfo(torch.float32).eps * exact.abs()  # a few rounding steps
    assert (err_ours <= err_tv + step + rounding).all()
    if gamma > 0:  # where the modulating factor matters, strictly more accurate somewhere
        assert (err_ours < err_tv).any()


def test_focal_loss_is_never_above_torch_bce():
    """As torchvision's tests require of a focal loss: elementwise, FL (any gamma, with or
    without alpha) <= alpha_t * BCE-with-logits on the same input, logits spread over [-30, 30]
    (and beyond), on every backend (the module's backend fixture)."""
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.rand(4000, generator=g) * 60 - 30, torch.randn(4000, generator=g) * 200])
    t = (torch.rand(8000, generator=g) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
        for alpha in (-1.0, 0.25, 0.75):
            a_t = 1.0 if alpha < 0 else t * (2 * alpha - 1) + (1 - alpha)
            fl = sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
            above = int((fl > a_t * bce).sum())
            assert above == 0, f"gamma {gamma}, alpha {alpha}: {above} elements above BCE"



@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_focal_loss_star_with_beta_zero_matches_fvcore(reduction, alpha):
    x, t = _inputs()
    for gamma in (1.0, 2.0, 4.0):
        ours = sigmoid_focal_loss_star(x, t, gamma=gamma, beta=0.0, alpha=alpha,
                                       reduction=reduction)
        fv = fv_star(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
        torch.testing.assert_close(ours, fv, rtol=1e-6, atol=1e-7)


def test_focal_loss_star_beta_formula():
    x, t = _inputs(soft=True, dtype=torch.float64)
    gamma, beta = 2.0, 1.0
    x_t = x * (2 * t - 1)
    expected = -torch.nn.functional.logsigmoid(gamma * x_t + beta) / gamma
    ours = sigmoid_focal_loss_star(x, t, gamma=gamma, beta=beta, reduction="none")
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-15)


def test_gamma_zero_is_cross_entropy_in_value_and_gradient():
    x, t = _inputs()
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    a = sigmoid_focal_loss(x1, t, gamma=0.0, alpha=-1.0, reduction="sum")
    b = torch.nn.functional.binary_cross_entropy_with_logits(x2, t, reduction="sum")
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sigmoid_cross_entropy(x, t, reduction="sum"), b.detach())
    bal = sigmoid_balanced_cross_entropy(x, t, alpha=0.75, reduction="none")
    ce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(bal, ce * torch.where(t == 1, 0.75, 0.25))


def _appendix_b(x, t, gamma, alpha, star=False, beta=0.0):
    """Closed-form derivatives of Appendix B, evaluated in float64."""
    y = 2 * t - 1
    x_t = x * y
    a_t = torch.where(t == 1, alpha, 1 - alpha) if alpha >= 0 else torch.ones_like(x)
    if star:
        return a_t * y * (torch.sigmoid(gamma * x_t + beta) - 1)
    p_t = torch.sigmoid(x_t)
    return a_t * y * (1 - p_t) ** gamma * (gamma * p_t * torch.log(p_t) + p_t - 1)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_gradients_equal_appendix_b(gamma, alpha):
    x, t = _inputs(scale=4.0, dtype=torch.float64)
    x.requires_grad_()
    sigmoid_focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="sum").backward()
    torch.testing.assert_close(x.grad, _appendix_b(x.detach(), t, gamma, alpha))
    x.grad = None
    if gamma > 0:
        sigmoid_focal_loss_star(x, t, gamma=gamma, beta=1.0, alpha=alpha,
                                reduction="sum").backward()
        torch.testing.assert_close(
            x.grad, _appendix_b(x.detach(), t, gamma, alpha, star=True, beta=1.0))


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(soft, reduction):
    x, t = _inputs(shape=(6, 5), dtype=torch.float64, soft=soft)
    x.requires_grad_()
    fns = [
        lambda z: sigmoid_focal_loss(z, t, gamma=2.0, alpha=0.25, reduction=reduction),
        lambda z: sigmoid_focal_loss(z, t, gamma=0.5, alpha=-1, reduction=reduction),
        lambda z: sigmoid_focal_loss_star(z, t, gamma=2.0, beta=1.0, alpha=0.25,
                                          reduction=reduction),
        lambda z: sigmoid_cross_entropy(z, t, reduction=reduction),
        lambda z: sigmoid_balanced_cross_entropy(z, t, alpha=0.75, reduction=reduction),
    ]
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_finite_for_huge_logits(gamma):
    x = torch.tensor([[-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4]] * 2, requires_grad=True)
    t = torch.tensor([[0.0] * 7, [1.0] * 7])
    for fn in (
        lambda: sigmoid_focal_loss(x, t, gamma=gamma, reduction="none"),
        lambda: sigmoid_focal_loss_star(x, t, gamma=max(gamma, 1.0), reduction="none"),
        lambda: sigmoid_focal_loss(x, t * 0.7, gamma=gamma, reduction="none"),
    ):
        loss = fn()
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
        x.grad = None
    # A confident wrong logit costs about alpha_t * |x| (times (1-p_t)^gamma = 1).
    loss = sigmoid_focal_loss(x, t, gamma=gamma, reduction="none")
    assert loss[0, -1].item() == pytest.approx(0.75 * 1e4, rel=1e-6)
    assert loss[1, 0].item() == pytest.approx(0.25 * 1e4, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    x, t = _inputs()
    xh = x.to(dtype).requires_grad_()
    loss = sigmoid_focal_loss(xh, t.to(dtype), reduction="sum")
    assert loss.dtype == torch.float32
    ref = tv_focal(xh.detach().float(), t, reduction="sum")
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=0)
    loss.backward()
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()


def test_easy_examples_lose_more_than_hard_ones():
    # p_t = 0.9: 100x less than CE for gamma = 2; p_t ~ 0.968: about 1000x less.
    for p_t, factor in ((0.9, 100.0), (0.968377, 1000.0)):
        x = torch.tensor([math.log(p_t / (1 - p_t))], dtype=torch.float64)
        t = torch.ones(1, dtype=torch.float64)
        fl = sigmoid_focal_loss(x, t, gamma=2.0, alpha=-1, reduction="sum")
        ce = sigmoid_cross_entropy(x, t, reduction="sum")
        assert (ce / fl).item() == pytest.approx(factor, rel=1e-3)


def test_chunking_does_not_change_the_result(monkeypatch):
    import focal_det.kernels.reference as LF

    x, t = _inputs(shape=(1000, 9))
    full = sigmoid_focal_loss(x, t, reduction="none")
    monkeypatch.setattr(LF, "CHUNK_ELEMENTS", 50)
    # Vectorized and scalar-tail math may differ in the last bit; nothing more.
    torch.testing.assert_close(sigmoid_focal_loss(x, t, reduction="none"), full, rtol=1e-6, atol=0)


def test_inputs_are_not_modified():
    x, t = _inputs()
    x0, t0 = x.clone(), t.clone()
    for fn in (sigmoid_focal_loss, sigmoid_focal_loss_star):
        fn(x, t, reduction="sum")
    assert torch.equal(x, x0) and torch.equal(t, t0)


def test_bad_parameters_raise_clear_errors():
    x, t = _inputs()
    with pytest.raises(ValueError, match="gamma=-1"):
        sigmoid_focal_loss(x, t, gamma=-1.0)
    with pytest.raises(ValueError, match="gamma > 0"):
        sigmoid_focal_loss_star(x, t, gamma=0.0)
    with pytest.raises(ValueError, match="alpha=1.5"):
        sigmoid_focal_loss(x, t, alpha=1.5)
    with pytest.raises(ValueError, match="reduction='avg'"):
        sigmoid_focal_loss(x, t, reduction="avg")
    with pytest.raises(ValueError, match="shape"):
        sigmoid_focal_loss(x, t[:, :3])


# ---------------------------------------------------------------- registry


def _cfg(**kw):
    cfg = focal_det.get_cfg()
    for k, v in kw.items():
        setattr(cfg.MODEL.FOCAL_DET.CLS_LOSS, k, v)
    return cfg


def test_registry_has_the_paper_family():
    for name in ("FocalLoss", "FocalLossStar", "CrossEntropy", "BalancedCrossEntropy"):
        assert name in CLS_LOSS_REGISTRY
    assert {"PriorProb", "Zero"} <= {n for n, _ in BIAS_INIT_REGISTRY}


def _labels_to_targets(labels, k):
    t = torch.nn.functional.one_hot(labels.clamp_min(0), k + 1)[:, :k].float()
    return t, labels >= 0


@pytest.mark.parametrize("name", ["FocalLoss", "FocalLossStar", "CrossEntropy",
                                  "BalancedCrossEntropy"])
def test_label_path_equals_float_target_path(name):
    k = 6
    loss = build_cls_loss(_cfg(NAME=name))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, k, generator=g) * 3
    labels = torch.randint(-1, k + 1, (500,), generator=g)
    t, valid = _labels_to_targets(labels, k)
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    a = loss(xa, labels)
    b = loss.loss(xb[valid], t[valid], reduction="sum")
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-7)
    assert (xa.grad[labels < 0] == 0).all()


@pytest.mark.parametrize("name,extra", [("FocalLoss", {}), ("FocalLoss", {"GAMMA": 0.5}),
                                        ("FocalLoss", {"ALPHA": -1.0}), ("CrossEntropy", {}),
                                        ("BalancedCrossEntropy", {}),
                                        ("FocalLossStar", {"GAMMA": 2.0, "BETA": 1.0}),
                                        ("FocalLossStar", {"GAMMA": 4.0, "BETA": 0.0,
                                                           "ALPHA": -1.0})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_label_path_across_chunks(name, extra, dtype):
    """The label path (what the model calls) over several chunks, with positives, background
    and ignored rows, equals the float target path in float64 in value and gradient."""
    from focal_det.kernels.reference import CHUNK_ELEMENTS

    k = 80
    rows = 3 * (CHUNK_ELEMENTS // k) + 17  # 4 chunks, the last one partial
    loss = build_cls_loss(_cfg(NAME=name, **extra))
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(rows, k, generator=g) * 4 - 3).to(dtype)
    labels = torch.full((rows,), k)
    pick = torch.rand(rows, generator=g)
    labels[pick < 0.05] = torch.randint(0, k, (int((pick < 0.05).sum()),), generator=g)
    labels[pick > 0.97] = -1
    t, valid = _labels_to_targets(labels, k)
    xa = x.clone().requires_grad_()
    a = loss(xa, labels)
    a.backward()
    x64 = x.double()[valid].requires_grad_()
    ref = loss.loss(x64, t[valid].double(), reduction="sum")
    ref.backward()
    assert a.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert xa.grad.dtype == dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-6}[dtype]
    torch.testing.assert_close(a.double(), ref.detach(), rtol=tol, atol=0)
    grad_tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(xa.grad[valid].double(), x64.grad.to(dtype).double(),
                               rtol=grad_tol, atol=1e-7)
    assert (xa.grad[~valid] == 0).all()
    assert (labels < 0).any() and ((labels >= 0) & (labels < k)).sum() > 100


@pytest.mark.parametrize("name,extra", [("FocalLoss", {}), ("CrossEntropy", {}),
                                        ("BalancedCrossEntropy", {}),
                                        ("FocalLossStar", {"GAMMA": 2.0, "BETA": 1.0}),
                                        ("FocalLossStar", {"GAMMA": 4.0, "BETA": 0.0})])
def test_prior_bias_gives_the_prior_probability(name, extra):
    cfg = _cfg(NAME=name, **extra)
    loss = build_cls_loss(cfg)
    for prior in (0.01, 0.3):
        cfg.MODEL.FOCAL_DET.HEAD.PRIOR_PROB = prior
        b = class_bias("PriorProb", loss, prior, 3)
        assert b.shape == (3,)
        assert loss.probs(b).tolist() == pytest.approx([prior] * 3)
    assert class_bias("Zero", loss, 0.01, 3).tolist() == [0.0] * 3


def test_fl_star_probs_and_prior_formula():
    loss = build_cls_loss(_cfg(NAME="FocalLossStar", GAMMA=2.0, BETA=1.0))
    x = torch.tensor([0.3])
    assert torch.allclose(loss.probs(x), torch.sigmoid(2.0 * x + 1.0))
    assert loss.prior_logit(0.01) == pytest.approx((math.log(0.01 / 0.99) - 1.0) / 2.0)
    fl = build_cls_loss(_cfg(NAME="FocalLoss"))
    assert fl.prior_logit(0.01) == pytest.approx(-math.log(0.99 / 0.01))
    assert fl.prior_logit(0.01) == pytest.approx(-4.59512, abs=1e-5)


def test_user_registered_loss_is_selected_by_name():
    from detectron2.config import configurable

    from focal_det.losses import FocalLoss

    @CLS_LOSS_REGISTRY.register()
    class HalfFocalLoss(FocalLoss):
        """A user's loss: half of FL."""

        @configurable
        def __init__(self, *, gamma=2.0):
            super().__init__(gamma=gamma, alpha=0.25)

        @classmethod
        def from_config(cls, cfg):
            return {"gamma": cfg.MODEL.FOCAL_DET.CLS_LOSS.GAMMA}

        def __call__(self, logits, labels):
            return 0.5 * super().__call__(logits, labels)

    try:
        loss = build_cls_loss(_cfg(NAME="HalfFocalLoss"))
        x = torch.randn(20, 3)
        labels = torch.randint(0, 4, (20,))
        ref = build_cls_loss(_cfg(NAME="FocalLoss"))(x, labels)
        torch.testing.assert_close(loss(x, labels), 0.5 * ref)
    finally:
        CLS_LOSS_REGISTRY._obj_map.pop("HalfFocalLoss")


@pytest.mark.parametrize("kw,match", [
    ({"NAME": "Hinge"}, r"MODEL.FOCAL_DET.CLS_LOSS.NAME='Hinge'.*FocalLoss"),
    ({"GAMMA": -0.5}, r"MODEL.FOCAL_DET.CLS_LOSS.*gamma=-0.5"),
    ({"NAME": "FocalLossStar", "GAMMA": 0.0}, r"MODEL.FOCAL_DET.CLS_LOSS.*gamma > 0"),
    ({"ALPHA": 2.0}, r"MODEL.FOCAL_DET.CLS_LOSS.*alpha=2.0"),
    ({"NAME": "BalancedCrossEntropy", "ALPHA": -1.0}, r"MODEL.FOCAL_DET.CLS_LOSS.ALPHA=-1.0"),
])
def test_bad_config_values_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        build_cls_loss(_cfg(**kw))


@pytest.mark.parametrize("prior", [0.0, 1.0, -0.1, 1.5])
def test_bad_prior_names_the_key(prior):
    cfg = _cfg()
    with pytest.raises(ValueError, match=r"MODEL.FOCAL_DET.HEAD.PRIOR_PROB=.*\(0, 1\)"):
        class_bias("PriorProb", build_cls_loss(cfg), prior, 3)


def test_positional_order_is_torchvision_and_fvcore():
    """sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction), as torchvision's and
    fvcore's; FL* likewise, then beta."""
    x, t = _inputs()
    ours = sigmoid_focal_loss(x, t, 0.5, 1.0, "sum")
    torch.testing.assert_close(ours, tv_focal(x, t, 0.5, 1.0, "sum"), rtol=1e-6, atol=1e-6)
    ours = sigmoid_focal_loss(inputs=x, targets=t, alpha=0.5, gamma=1.0, reduction="mean")
    torch.testing.assert_close(ours, fv_focal(x, t, 0.5, 1.0, "mean"), rtol=1e-6, atol=1e-6)
    star = sigmoid_focal_loss_star(x, t, 0.25, 2.0, "sum", 0.0)
    torch.testing.assert_close(star, fv_star(x, t, 0.25, 2.0, "sum"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_easy_negatives_keep_exact_gradients(gamma):
    """The loss value rounds very easy negatives as torch's BCE does; their gradient must not:
    relative to the float64 gradient, logits in [-25, -8] with target 0 (every backend, by the
    module's backend fixture)."""
    x = torch.linspace(-25, -8, 2000)
    t = torch.zeros_like(x)
    x64 = x.double().requires_grad_()
    tv_focal(x64, t.double(), alpha=0.25, gamma=gamma, reduction="sum").backward()
    xx = x.clone().requires_grad_()
    sigmoid_focal_loss(xx, t, alpha=0.25, gamma=gamma, reduction="sum").backward()
    rel = ((xx.grad.double() - x64.grad).abs() / x64.grad.abs()).max().item()
    assert rel < 1e-4, rel
