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
input's dtype. The kernels below, run over cache-sized chunks of rows by :func:`run_chunked`,
are the plain-PyTorch definition: the ``reference`` backend, used where no fast path is built.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels import LossSpec, fused_loss

__all__ = [
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "sigmoid_cross_entropy",
    "sigmoid_balanced_cross_entropy",
    "check_focal_params",
]

# Elements per chunk: small enough that the ~15 temporaries of a chunk stay in L2 cache.
CHUNK_ELEMENTS = 1 << 16
_REDUCTIONS = ("none", "mean", "sum")

# A kernel maps (x, t, need_grad) -> (loss, dloss/dx or None), all in the compute dtype.
Kernel = Callable[[Tensor, Tensor, bool], Tuple[Tensor, Optional[Tensor]]]


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


def _alpha_t(t: Tensor, alpha: float) -> Tensor:
    # alpha for positives, 1 - alpha for negatives, linear in soft targets (as torchvision).
    return t * (2.0 * alpha - 1.0) + (1.0 - alpha)


def focal_kernel(gamma: float, alpha: float) -> Kernel:
    """Per-element FL and its gradient for (soft) targets t in [0, 1]."""

    def kernel(x: Tensor, t: Tensor, need_grad: bool):
        log_p = F.logsigmoid(x)  # log p
        log_1mp = F.logsigmoid(-x)  # log(1 - p), exact where p ~ 1
        p, one_m_p = log_p.exp(), log_1mp.exp()
        one_m_t = 1.0 - t
        ce = -(t * log_p).add_(one_m_t * log_1mp)  # BCE(x, t)
        q = (t * one_m_p).add_(one_m_t * p)  # 1 - p_t, without cancellation
        if gamma == 0:
            mod = None
        elif gamma == 2:
            mod = q * q
        elif gamma == 1:
            mod = q
        else:
            mod = q.pow(gamma)
        loss = ce if mod is None else ce * mod
        a_t = _alpha_t(t, alpha) if alpha >= 0 else None
        if a_t is not None:
            loss = loss.mul_(a_t) if loss is not ce else loss * a_t
        if not need_grad:
            return loss, None
        # d/dx = alpha_t [ (p - t) q^g - g ce q^(g-1) p (1-p) (2t-1) ], with p - t written
        # without cancellation and q^(g-1) p (1-p) as q^g * (p (1-p) / q), 0 where q = 0.
        grad = (one_m_t * p).sub_(t * one_m_p)
        if mod is not None:
            ratio = (p * one_m_p).div_(q.clamp_min(torch.finfo(q.dtype).tiny))
            grad = grad.sub_(ratio.mul_(ce).mul_(2.0 * t - 1.0).mul_(gamma)).mul_(mod)
        if a_t is not None:
            grad = grad.mul_(a_t)
        return loss, grad

    return kernel


def binary_focal_kernel(gamma: float, alpha: float) -> Kernel:
    """FL and its gradient for binary targets t in {0, 1} (bool or float); elementwise.

    Also carries ``sum_into``, the fused form used for "sum"/"mean": it never materializes the
    elementwise loss and writes the gradient straight into the output buffer.
    """

    def terms(x: Tensor, pos: Tensor):
        # With x_n = -x_t: -log p_t = softplus(x_n) and 1 - p_t = sigmoid(x_n), both exact.
        x_n = torch.where(pos, x.neg(), x)
        ce = F.softplus(x_n)
        q = torch.sigmoid(x_n)
        mod = None if gamma == 0 else (q if gamma == 1 else (q * q if gamma == 2 else q.pow(gamma)))
        return ce, q, mod

    def alphas(x: Tensor, weight: Optional[Tensor]):
        a_pos, a_neg = (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)
        if weight is None:
            return (torch.tensor(a_pos, dtype=x.dtype, device=x.device),
                    torch.tensor(a_neg, dtype=x.dtype, device=x.device))
        return weight * a_pos, weight * a_neg

    def grad_terms(ce, q, mod):
        # dFL/dx = -y alpha_t (1 - p_t)^gamma (gamma p_t (-log p_t) + (1 - p_t))
        m = torch.addcmul(q, 1.0 - q, ce, value=gamma) if gamma != 0 else q
        return m.mul_(mod) if mod is not None else m

    def kernel(x: Tensor, t: Tensor, need_grad: bool):
        pos = t if t.dtype == torch.bool else t > 0.5
        ce, q, mod = terms(x, pos)
        a_pos, a_neg = alphas(x, None)
        at = torch.where(pos, a_pos, a_neg)
        loss = (ce * mod if mod is not None else ce).mul_(at)
        if not need_grad:
            return loss, None
        return loss, grad_terms(ce, q, mod).mul_(torch.where(pos, -a_pos, a_neg))

    def sum_into(x: Tensor, t: Tensor, weight: Optional[Tensor], grad_out: Optional[Tensor]):
        if t.dtype != torch.bool and not is_binary(t):
            return None
        pos = t if t.dtype == torch.bool else t > 0.5
        ce, q, mod = terms(x, pos)
        a_pos, a_neg = alphas(x, weight)
        lm = ce * mod if mod is not None else ce
        total = lm.mul_(torch.where(pos, a_pos, a_neg)).sum()  # cascade sum: accurate
        if grad_out is not None:
            torch.mul(grad_terms(ce, q, mod), torch.where(pos, -a_pos, a_neg), out=grad_out)
        return total.double()

    kernel.sum_into = sum_into
    return kernel


def is_binary(t: Tensor) -> bool:
    return bool(torch.logical_or(t == 0, t == 1).all())


def with_binary_fast_path(binary: Kernel, general: Kernel) -> Kernel:
    """Use ``binary`` on chunks whose targets are all 0 or 1, ``general`` otherwise."""

    def kernel(x: Tensor, t: Tensor, need_grad: bool):
        return (binary if is_binary(t) else general)(x, t, need_grad)

    return kernel


def focal_loss_kernel(gamma: float, alpha: float) -> Kernel:
    """FL kernel for float targets: the binary fast path where targets are 0/1."""
    return with_binary_fast_path(binary_focal_kernel(gamma, alpha), focal_kernel(gamma, alpha))


def focal_star_kernel(gamma: float, beta: float, alpha: float) -> Kernel:
    """Per-element FL* and its gradient for (soft) targets t in [0, 1]."""

    def kernel(x: Tensor, t: Tensor, need_grad: bool):
        y = 2.0 * t - 1.0
        z = (x * y).mul_(gamma).add_(beta)  # gamma * x_t + beta
        loss = F.logsigmoid(z).div_(-gamma)
        a_t = _alpha_t(t, alpha) if alpha >= 0 else None
        if a_t is not None:
            loss = loss.mul_(a_t)
        if not need_grad:
            return loss, None
        grad = torch.sigmoid(z.neg_()).mul_(y).neg_()  # y (p*_t - 1) = -y sigmoid(-z)
        if a_t is not None:
            grad = grad.mul_(a_t)
        return loss, grad

    return kernel


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32 and half types are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def run_chunked(
    x2d: Tensor,
    targets_of: Callable[[int, int], Tuple[Tensor, Optional[Tensor]]],
    kernel: Kernel,
    *,
    elementwise: bool,
    need_grad: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Apply ``kernel`` to row-chunks of ``x2d`` (R, C).

    ``targets_of(start, end)`` returns the (rows, C) float targets of rows [start, end) and an
    optional (rows, 1) weight (0 drops a row, e.g. ignored anchors). Returns the loss (sum as a
    0-dim tensor, or (R, C) elementwise) and the gradient (R, C) in x2d's dtype, or None.
    """
    rows, cols = x2d.shape
    cdtype = compute_dtype(x2d.dtype)
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    out = x2d.new_empty((rows, cols), dtype=cdtype) if elementwise else None
    grad = x2d.new_empty((rows, cols)) if need_grad else None
    partial_sums = []
    for start in range(0, rows, step):
        end = min(start + step, rows)
        x = x2d[start:end].to(cdtype)
        t, weight = targets_of(start, end)
        sum_into = getattr(kernel, "sum_into", None)
        if not elementwise and sum_into is not None:
            partial = sum_into(x, t, weight, grad[start:end] if need_grad else None)
            if partial is not None:
                partial_sums.append(partial)
                continue
        if t.dtype == torch.bool:
            t = t.to(cdtype)
        loss, g = kernel(x, t, need_grad)
        if weight is not None:
            loss = loss * weight
            if g is not None:
                g = g.mul_(weight)
        if elementwise:
            out[start:end] = loss
        else:
            partial_sums.append(loss.sum(dtype=torch.float64))
        if g is not None:
            grad[start:end] = g
    if not elementwise:
        total = torch.stack(partial_sums).sum() if partial_sums else x2d.new_zeros((), dtype=torch.float64)
        out = total.to(cdtype)
    return out, grad


def kernel_for(spec, binary: bool = False) -> Kernel:
    """The plain-PyTorch kernel of a ``focal_det.kernels.LossSpec`` (the reference backend);
    ``binary``: targets are known to be 0/1 (the label path)."""
    if spec.star:
        return focal_star_kernel(spec.gamma, spec.beta, spec.alpha)
    if binary:
        return binary_focal_kernel(spec.gamma, spec.alpha)
    return focal_loss_kernel(spec.gamma, spec.alpha)


def apply_loss(logits: Tensor, targets: Tensor, spec, reduction: str) -> Tensor:
    """The loss of ``spec`` with float ``targets`` of ``logits``' shape, reduced."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {list(_REDUCTIONS)}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape)}"
        )
    return fused_loss(logits, spec, reduction, targets=targets)


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Focal loss FL = -alpha_t (1 - p_t)^gamma log(p_t) (Lin et al. 2017, eq. 5).

    Drop-in for ``torchvision.ops.sigmoid_focal_loss`` and ``fvcore.nn.sigmoid_focal_loss``:
    same positional order and names (``inputs, targets, alpha, gamma, reduction``) and
    defaults; ``inputs`` any shape, ``targets`` the same shape in [0, 1]; ``alpha`` < 0
    disables weighting; ``reduction`` is "none" (same shape as inputs), "mean" or "sum"
    (0-dim). Differences: half-precision inputs are computed in float32 and the loss is
    returned in float32 (torchvision/fvcore return the input dtype); values are computed from
    log-sigmoid forms, so they stay finite and accurate for |x| up to 1e4 and beyond.
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
