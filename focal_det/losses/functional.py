"""Sigmoid classification losses of the Focal Loss paper as pure functions of tensors.

Shape legend: ``logits`` is any shape (typically (R, K): R anchors, K classes); ``targets`` has
the same shape with values in [0, 1] (1 = positive, 0 = negative; soft values allowed). In the
label form used by the model, ``labels`` is (R,) int64 with K = background, -1 = ignore.

Notation (paper): x = logit, t = target, y = 2t - 1, p = sigmoid(x), p_t = p if t = 1 else 1 - p,
x_t = y * x, alpha_t = alpha if t = 1 else 1 - alpha.

- FL   = -alpha_t (1 - p_t)^gamma log(p_t)           (gamma = 0: alpha-balanced CE)
- FL*  = -alpha_t log(sigmoid(gamma x_t + beta)) / gamma           (Appendix A)
- dFL/dx  = alpha_t y (1 - p_t)^gamma (gamma p_t log(p_t) + p_t - 1)  (Appendix B)
- dFL*/dx = alpha_t y (p*_t - 1)

How it is computed: ``focal_det.kernels`` evaluates the loss *and* its closed-form gradient
in one fused pass per call (a C++ operator on CPU, a Triton kernel on CUDA), from log-sigmoid
forms (no ``1 - p`` cancellation, finite for |x| up to 1e4 and beyond). Only the gradient is
saved for backward, which is then one multiply. Half-precision inputs are computed in float32
(AMP-safe); the loss is returned in float32 (float64 for float64 inputs), the gradient in the
input's dtype. The plain-PyTorch definition (the ``reference`` backend, used where no fast
path is built) is ``focal_det.kernels.reference``.
"""
import torch.nn.functional as F
from torch import Tensor

from ..kernels import LossSpec, fused_loss
from ..kernels.reference import Kernel  # noqa: F401  (the type of a user's own kernel)
from .base import check_reduction

__all__ = [
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "sigmoid_cross_entropy",
    "sigmoid_balanced_cross_entropy",
    "check_focal_params",
]



def check_focal_params(gamma: float, alpha: float, *, star: bool = False, beta: float = 0.0):
    """Raise ValueError for gamma < 0 (FL*: gamma <= 0) or alpha outside [0, 1] (negative = off)."""
    if star and not gamma > 0:
        raise ValueError(f"gamma={gamma!r}: FL* needs gamma > 0 (it divides by gamma)")
    if not star and not gamma >= 0:
        raise ValueError(f"gamma={gamma!r}: the focusing parameter must be >= 0")
    if not (alpha < 0 or 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha={alpha!r}: must be in [0, 1], or negative for no weighting")
    if beta != beta or abs(beta) == float("inf"):
        raise ValueError(f"beta={beta!r}: must be finite")


def apply_loss(logits: Tensor, targets: Tensor, spec, reduction: str) -> Tensor:
    """The loss of ``spec`` with float ``targets`` of ``logits``' shape, reduced."""
    check_reduction(reduction)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape)}"
        )
    if (reduction == "none" and isinstance(spec, LossSpec) and not spec.star and spec.gamma == 0
            and logits.dtype.itemsize >= 4):  # half logits: the fused kernel (no float32 copy)
        return _torch_cross_entropy(logits, targets, spec)
    return fused_loss(logits, spec, reduction, targets=targets)


def _torch_cross_entropy(logits: Tensor, targets: Tensor, spec: LossSpec) -> Tensor:
    """Elementwise (alpha-balanced) CE, the gamma = 0 member, as torch's own
    ``binary_cross_entropy_with_logits``: the same numbers to the last bit on every device, so
    FL is never above torch's BCE (the fused kernels' exp/log1p may differ by a rounding step;
    for gamma > 0 the modulating factor keeps FL below it). For float32 and float64 logits
    only: half logits go to the fused kernel, which reads them without a float32 copy."""
    from ..kernels.reference import _alpha_t, compute_dtype

    cdtype = compute_dtype(logits.dtype)
    x, t = logits.to(cdtype), targets.to(cdtype)
    per_class = spec.alpha_for(x.shape[-1], x.device, cdtype)
    alpha = per_class if per_class is not None else spec.alpha
    weight = _alpha_t(t, alpha) if per_class is not None or spec.alpha >= 0 else None
    return F.binary_cross_entropy_with_logits(x, t, weight=weight, reduction="none")


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Focal loss FL = -alpha_t (1 - p_t)^gamma log(p_t) (Lin et al. 2017, eq. 5).

    Drop-in for ``torchvision.ops.sigmoid_focal_loss`` and ``fvcore.nn.sigmoid_focal_loss``:
    same positional order and names (``inputs, targets, alpha, gamma, reduction``) and
    torchvision's defaults (alpha 0.25, the paper's; fvcore's default is alpha -1, no
    weighting: pass ``alpha=-1`` for fvcore's default loss); ``inputs`` any shape, ``targets``
    the same shape in [0, 1]; ``alpha`` < 0 disables weighting; ``reduction`` is "none" (same
    shape as inputs), "mean" or "sum" (0-dim). Differences: half-precision inputs are
    computed in float32 and the loss is returned in float32 (torchvision/fvcore return the
    input dtype); values are computed from log-sigmoid forms, so they stay finite and accurate
    for |x| up to 1e4 and beyond.
    """
    check_focal_params(gamma, alpha)
    return apply_loss(inputs, targets, LossSpec(False, float(gamma), float(alpha)), reduction)


def sigmoid_focal_loss_star(
    inputs: Tensor, targets: Tensor, alpha: float = -1.0, gamma: float = 2.0,
    reduction: str = "none", beta: float = 1.0,
) -> Tensor:
    """FL* = -log(sigmoid(gamma x_t + beta)) / gamma, times alpha_t if alpha >= 0 (Appendix A).

    Positional order and names as ``fvcore.nn.sigmoid_focal_loss_star`` (``inputs, targets,
    alpha, gamma, reduction``), then ``beta``. Differences from fvcore: fvcore has no beta
    (it is FL* with beta = 0; ours defaults to the paper's beta = 1), its default gamma is 1
    (ours 2, the paper's FL* setting), and half inputs are computed and returned in float32.
    """
    check_focal_params(gamma, alpha, star=True, beta=beta)
    spec = LossSpec(True, float(gamma), float(alpha), float(beta))
    return apply_loss(inputs, targets, spec, reduction)


def sigmoid_cross_entropy(inputs: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
    """Binary cross-entropy with logits, CE = -log(p_t): the gamma = 0, no-alpha member of FL."""
    return apply_loss(inputs, targets, LossSpec(False, 0.0, -1.0), reduction)


def sigmoid_balanced_cross_entropy(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, reduction: str = "none"
) -> Tensor:
    """Alpha-balanced CE = -alpha_t log(p_t) (paper eq. 3): FL with gamma = 0."""
    check_focal_params(0.0, alpha)
    if alpha < 0:
        raise ValueError(f"alpha={alpha!r}: balanced cross-entropy needs alpha in [0, 1]")
    return apply_loss(inputs, targets, LossSpec(False, 0.0, float(alpha)), reduction)
