"""The loss family in every dtype: each backend (native C++, plain-PyTorch reference, Triton under
TRITON_INTERPRET=1, see conftest.py) x {float32, bfloat16, float16} logits x every gamma case
(0, 1, 2, other gammas 0.5 and 5, FL*, per-class alpha, softmax FL) x the label path and the
float-target path (0/1 and soft targets), on logits spanning -60..60 and N(0, 3), against a
float64 computation with autograd on the *same* (rounded) inputs. The loss is float32 and
finite; the gradient is finite, has the logits' dtype, and is the float64 gradient rounded once
to that dtype. Half logits enter the kernels chunk by chunk, never as a float32 copy of the
whole tensor. With TRITON_INTERPRET=0 on a CUDA machine (``make gpu-check``), the Triton cases
run the compiled kernel on CUDA tensors (skipped without CUDA).

Tolerances (``ref`` the float64 value):

- loss, every dtype: |ours - ref| <= 2e-5 |ref| (computed in float32 from the rounded logits,
  summed in float64; the half dtypes add no error of their own);
- gradient: |ours - ref| <= u(ref) + 5e-5 |ref| + 1e-30, where
  - u(ref) is half a unit in the last place of ``ref`` in the logits' dtype, 0 for float32:
    one round-to-nearest from float32 (bfloat16: 8 significant bits, u <= 2**-8 |ref|;
    float16: 11 bits, u <= 2**-11 |ref|, and 2**-25 below float16's smallest normal 2**-14,
    so gradients under ~3e-8 may round to 0). A gradient rounded twice (e.g. to the half
    dtype, then scaled by 1/N for "mean" and rounded again) misses this bound;
  - 5e-5 |ref| is float32 arithmetic: exp(-|z|) of an argument up to ~280 (FL* gamma 4)
    carries ~280 * 2**-24 relative error;
  - 1e-30: where float32 intermediates underflow (e.g. (1 - p_t)**5 below float32's smallest
    normal), true gradients below ~1e-30 come out 0 or imprecise;
- soft targets (t strictly between 0 and 1) add 1e-7 absolute: their gradient is a difference
  of two terms of size up to ~1, each with float32's relative error (~2**-23);
- softmax FL adds 1e-7 absolute: the label column's p_t - 1 is a float32 difference (error
  ~2**-24 alpha_t where p_t ~ 1), and where float32's log p_t rounds to 0 (margins above ~17)
  gradients of size (1 - p_t)^(1 + gamma) < 1e-10 are dropped; the sigmoid family is exact
  there.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from focal_det.kernels import LossSpec, fused_loss, reference, use_backend
from focal_det.losses import functional
from focal_det.losses import softmax as softmax_module
from focal_det.losses.softmax import softmax_focal_loss

BACKENDS = ["native", "reference", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HALF = [torch.bfloat16, torch.float16]
ROWS, K = 61, 80  # 4880 elements
SPECS = {  # every gamma case of the sigmoid family
    "gamma0": LossSpec(False, 0.0, 0.25), "ce": LossSpec(False, 0.0, -1.0),
    "gamma1": LossSpec(False, 1.0, 0.25), "gamma2": LossSpec(False, 2.0, 0.25),
    "gamma0.5": LossSpec(False, 0.5, 0.75), "gamma5": LossSpec(False, 5.0, 0.25),
    "star2_1": LossSpec(True, 2.0, -1.0, 1.0), "star4_0": LossSpec(True, 4.0, 0.25, 0.0),
    "class_alpha": LossSpec(False, 2.0, 0.25, 0.0, torch.linspace(0.1, 0.9, K)),
}
TARGETS = ["labels", "binary", "soft"]
SIGNIFICAND_BITS = {torch.bfloat16: 8, torch.float16: 11}
MIN_NORMAL_EXP = {torch.bfloat16: -126, torch.float16: -14}
FP32_RTOL, ATOL = 5e-5, 1e-30
LOSS_RTOL = 2e-5


def _logits(rows, k, seed=0):
    """Half the elements spread over -60..60, half 0; each plus N(0, 3) noise."""
    g = torch.Generator().manual_seed(seed)
    n = rows * k
    x = torch.linspace(-60, 60, n)[torch.randperm(n, generator=g)]
    x = torch.where(torch.arange(n) % 2 == 0, x, torch.zeros(n))
    return (x + 3 * torch.randn(n, generator=g)).reshape(rows, k)


def _targets(kind, rows, k, seed=1):
    """(labels, float targets) for ``kind``; one of them None."""
    g = torch.Generator().manual_seed(seed)
    if kind == "labels":
        labels = torch.full((rows,), k)
        u = torch.rand(rows, generator=g)
        labels[u < 0.3] = torch.randint(0, k, (int((u < 0.3).sum()),), generator=g)
        labels[u > 0.95] = -1  # ignored
        return labels, None
    t = (torch.rand(rows, k, generator=g) < 0.1).float()
    if kind == "soft":
        soft = torch.rand(rows, k, generator=g) < 0.2
        t = torch.where(soft, torch.rand(rows, k, generator=g), t)
    return None, t


def assert_loss_close(loss, ref):
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), ref, rtol=LOSS_RTOL, atol=0.0)


def assert_grad_rounded_once(grad, ref, dtype, extra_atol=0.0):
    """``grad`` (``dtype``) is ``ref`` (float64) up to one rounding to ``dtype`` plus float32
    arithmetic (see the module docstring)."""
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    bound = FP32_RTOL * ref.abs() + ATOL + extra_atol
    if dtype in SIGNIFICAND_BITS:
        exp = torch.floor(torch.log2(ref.abs().clamp_min(1e-300))).clamp_min(MIN_NORMAL_EXP[dtype])
        bound = bound + torch.exp2(exp - SIGNIFICAND_BITS[dtype])  # half an ulp of ref
    err = (grad.double() - ref).abs()
    bad = err > bound
    if bad.any():
        i = int((err / bound).argmax())
        raise AssertionError(
            f"{int(bad.sum())} of {grad.numel()} gradients beyond one {dtype} rounding; worst: "
            f"ours {grad.flatten()[i].item()!r}, float64 {ref.flatten()[i].item()!r}, "
            f"bound {bound.flatten()[i].item():.3g}")


def sigmoid_float64(spec, x, labels, t):
    """Sum of the loss and its autograd gradient in float64, from cancellation-free forms."""
    x = x.double().detach().requires_grad_()
    if labels is not None:
        t = F.one_hot(labels.clamp_min(0), x.shape[1] + 1)[:, :-1].double()
        w = (labels >= 0).double()[:, None]
    else:
        t, w = t.double(), 1.0
    alpha = spec.class_alpha.double() if spec.class_alpha is not None else spec.alpha
    weighted = spec.class_alpha is not None or spec.alpha >= 0
    a_t = t * (2 * alpha - 1) + (1 - alpha) if weighted else 1.0
    if spec.star:
        per = F.softplus(-(spec.gamma * x * (2 * t - 1) + spec.beta)) / spec.gamma
    else:
        ce = t * F.softplus(-x) + (1 - t) * F.softplus(x)  # = BCE(x, t)
        q = t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)  # 1 - p_t
        per = ce * q ** spec.gamma if spec.gamma else ce
    total = (a_t * per * w).sum()
    total.backward()
    return total.detach(), x.grad


def device_of(backend):
    """CPU, except the Triton backend outside the interpreter: CUDA."""
    if backend != "triton" or os.environ.get("TRITON_INTERPRET") == "1":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("the Triton backend needs CUDA or TRITON_INTERPRET=1")
    return torch.device("cuda")


def ours(backend, spec, x, labels, t, reduction="sum"):
    """Our loss and gradient (of the sum of the loss) on ``x`` in its own dtype (on CPU)."""
    dev = device_of(backend)
    x = x.detach().to(dev, copy=True).requires_grad_()
    labels = None if labels is None else labels.to(dev)
    t = None if t is None else t.to(dev)
    with use_backend(backend):
        loss = fused_loss(x, spec, reduction, labels=labels, targets=t)
        loss.sum().backward()
    return loss.detach().cpu(), x.grad.cpu()


@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("case", list(SPECS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_family_against_float64(backend, dtype, case, kind):
    spec = SPECS[case]
    x = _logits(ROWS, K).to(dtype)
    labels, t = _targets(kind, ROWS, K)
    if t is not None:
        t = t.to(dtype)  # float targets in the logits' dtype, as under autocast
    loss, grad = ours(backend, spec, x, labels, t)
    ref_loss, ref_grad = sigmoid_float64(spec, x, labels, t)
    assert_loss_close(loss, ref_loss)
    assert_grad_rounded_once(grad, ref_grad, dtype, 1e-7 if kind == "soft" else 0.0)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("kind", ["labels", "binary"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_other_reductions(backend, dtype, kind, reduction):
    """"mean" scales the float32 gradient by 1/N before its one rounding (4880 elements: not a
    power of two, so rounding before scaling would show)."""
    spec = SPECS["gamma0.5"]
    x = _logits(ROWS, K, seed=3).to(dtype)
    labels, t = _targets(kind, ROWS, K, seed=4)
    t = None if t is None else t.to(dtype)
    loss, grad = ours(backend, spec, x, labels, t, reduction)
    ref_loss, ref_grad = sigmoid_float64(spec, x, labels, t)
    scale = 1.0 / x.numel() if reduction == "mean" else 1.0
    assert loss.shape == (x.shape if reduction == "none" else ())
    assert_loss_close(loss.sum(), ref_loss * scale)
    assert_grad_rounded_once(grad, ref_grad * scale, dtype)


def test_triton_bfloat16_generic_gamma_gradient_is_not_zero():
    """The defect of issue 29: bf16 logits at gamma 0.5 (float targets, "sum") gave a gradient of
    0 on the Triton backend where float64 gives up to 0.757: its power clamp 1e-38, a float64
    literal to Triton, promoted the computation to float64, and the interpreter's float64 ->
    bfloat16 store converted the values to integers."""
    x = _logits(73, 68, seed=0).to(torch.bfloat16)
    _, t = _targets("binary", 73, 68)
    spec = LossSpec(False, 0.5, 0.25)
    loss, grad = ours("triton", spec, x, None, t.to(torch.bfloat16))
    ref_loss, ref_grad = sigmoid_float64(spec, x, None, t)
    zero = (grad == 0) & (ref_grad.abs() > 1e-30)
    assert not zero.any(), f"{int(zero.sum())} gradients are 0, float64 up to " \
                           f"{ref_grad[zero].abs().max().item():.3g}"
    assert_loss_close(loss, ref_loss)
    assert_grad_rounded_once(grad, ref_grad, torch.bfloat16)


# ----------------------------------------------------------------------------- no float32 copy
class _Float32Outputs(TorchDispatchMode):
    """The largest float32 tensor any op computes from (a view of) ``x``."""

    def __init__(self, x):
        super().__init__()
        self.storage = x.untyped_storage().data_ptr()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        reads_x = any(isinstance(a, torch.Tensor) and a.dtype in HALF and
                      a.untyped_storage().data_ptr() == self.storage
                      for a in tree_leaves((args, kwargs)))
        if reads_x:
            for o in tree_leaves(out):
                if isinstance(o, torch.Tensor) and o.dtype == torch.float32:
                    self.largest = max(self.largest, o.numel())
        return out


@pytest.mark.parametrize("kind", ["labels", "binary"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_logits_are_not_copied_to_float32(backend, dtype, kind, monkeypatch):
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 1024)  # several chunks of 12 rows
    dev = device_of(backend)
    x = _logits(ROWS, K).to(dev, dtype).requires_grad_()
    labels, t = _targets(kind, ROWS, K)
    labels = None if labels is None else labels.to(dev)
    t = None if t is None else t.to(dev)
    mode = _Float32Outputs(x)
    with use_backend(backend), mode:
        fused_loss(x, SPECS["gamma2"], "sum", labels=labels, targets=t).backward()
    assert x.grad.dtype == dtype
    assert mode.largest <= 1024, f"a float32 tensor of {mode.largest} elements read from x"


def test_softmax_half_logits_are_not_copied_to_float32(monkeypatch):
    monkeypatch.setattr(softmax_module, "CHUNK_ELEMENTS", 900)  # 100 rows of 9 per chunk
    x = _logits(400, 9, seed=5).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 9, (400,), generator=torch.Generator().manual_seed(6))
    mode = _Float32Outputs(x)
    with mode:
        softmax_focal_loss(x, labels).backward()
    assert x.grad.dtype == torch.bfloat16
    assert mode.largest <= 900, f"a float32 tensor of {mode.largest} elements read from x"


# ----------------------------------------------------------------------------- softmax FL
def softmax_float64(x, labels, gamma, alpha):
    """Softmax FL summed over valid rows, float64 with autograd; 1 - p_t and log p_t both
    without cancellation (from the log-sum-exp of the other logits)."""
    x = x.double().detach().requires_grad_()
    c = x.shape[1]
    valid = labels >= 0
    y = labels.clamp_min(0)
    onehot = F.one_hot(y, c).bool()
    lse = torch.logsumexp(x, 1)
    log_q = torch.logsumexp(x.masked_fill(onehot, float("-inf")), 1) - lse  # log(1 - p_t)
    q = log_q.exp()
    lp_direct = x.gather(1, y[:, None])[:, 0] - lse
    lp_small = torch.log1p(-q.clamp(max=0.5))  # exact where 1 - p_t is small
    lp_t = torch.where(q < 0.5, lp_small, lp_direct)
    mod = (gamma * log_q).exp() if gamma else 1.0
    a_t = torch.where(y == c - 1, 1.0 - alpha, alpha) if alpha >= 0 else 1.0
    total = (-(a_t * mod * lp_t) * valid).sum()
    total.backward()
    return total.detach(), x.grad


@pytest.mark.parametrize("gamma,alpha", [(0.0, 0.25), (1.0, -1.0), (2.0, 0.25), (0.5, 0.75),
                                         (5.0, 0.25)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_focal_against_float64(dtype, gamma, alpha):
    c = 9  # K = 8 classes + background
    x = _logits(400, c, seed=5).to(dtype)
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, c, (400,), generator=g)
    labels[torch.rand(400, generator=g) < 0.05] = -1
    xx = x.detach().clone().requires_grad_()
    loss = softmax_focal_loss(xx, labels, gamma=gamma, alpha=alpha)
    loss.backward()
    ref_loss, ref_grad = softmax_float64(x, labels, gamma, alpha)
    assert_loss_close(loss, ref_loss)
    assert_grad_rounded_once(xx.grad, ref_grad, dtype, 1e-7)


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_functional_api_in_half(dtype, reduction):
    """The torchvision/fvcore-style functions, "none" CE included (float32 logits take torch's
    own BCE there, half logits the fused kernel)."""
    x = _logits(ROWS, K, seed=7).to(dtype)
    _, t = _targets("soft", ROWS, K, seed=8)
    t = t.to(dtype)
    cases = [(functional.sigmoid_cross_entropy, {}, SPECS["ce"]),
             (functional.sigmoid_balanced_cross_entropy, {"alpha": 0.25}, SPECS["gamma0"]),
             (functional.sigmoid_focal_loss, {"alpha": 0.75, "gamma": 0.5}, SPECS["gamma0.5"]),
             (functional.sigmoid_focal_loss_star, {"gamma": 2.0, "beta": 1.0}, SPECS["star2_1"])]
    for fn, kwargs, spec in cases:
        xx = x.detach().clone().requires_grad_()
        loss = fn(xx, t, reduction=reduction, **kwargs)
        assert loss.dtype == torch.float32
        assert loss.shape == (x.shape if reduction == "none" else ())
        loss.sum().backward()
        ref_loss, ref_grad = sigmoid_float64(spec, x, None, t)
        assert_loss_close(loss.sum(), ref_loss)
        assert_grad_rounded_once(xx.grad, ref_grad, dtype, 1e-7)


# ----------------------------------------------------------------------------- torchvision
def _torchvision_case(dtype):
    x = _logits(73, 68, seed=0).to(dtype)
    _, t = _targets("binary", 73, 68)
    return x, t.to(dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_gradients_stay_finite_at_gamma_half(backend, dtype):
    """gamma 0.5 differentiates (1 - p_t) ** 0.5 where 1 - p_t rounds to 0 in half precision
    (easy examples): ours computes in float32 and selects that case away."""
    x, t = _torchvision_case(dtype)
    for reduction in ("sum", "mean", "none"):
        loss, grad = ours(backend, LossSpec(False, 0.5, 0.25), x, None, t, reduction)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert grad.dtype == dtype


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_torchvision_gradients_are_not_finite_there(dtype):
    """What the test above guards against: torchvision's sigmoid_focal_loss on the same input
    gives NaN gradients (pow's derivative at 0)."""
    torchvision = pytest.importorskip("torchvision")
    x, t = _torchvision_case(dtype)
    x.requires_grad_()
    torchvision.ops.sigmoid_focal_loss(x, t, alpha=0.25, gamma=0.5, reduction="sum").backward()
    assert not torch.isfinite(x.grad).all()
