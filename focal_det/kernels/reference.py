"""The ``reference`` loss backend: the paper's sigmoid losses and their closed-form gradients
as plain PyTorch ops, run over cache-sized chunks of rows. Any device, any dtype, no compiled
code; the definition the fused kernels (``native``, ``triton``) are tested against.

Shape legend and notation: see ``focal_det.losses.functional``.
"""
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .spec import LossSpec

# Elements per chunk: small enough that the ~15 temporaries of a chunk stay in L2 cache.
CHUNK_ELEMENTS = 1 << 16

# A kernel maps (x, t, need_grad) -> (loss, dloss/dx or None), all in the compute dtype.
Kernel = Callable[[Tensor, Tensor, bool], Tuple[Tensor, Optional[Tensor]]]


Alpha = Union[float, Tensor]  # one alpha, or (K,) per class (broadcast over the last dim)


def _weighted(alpha: Alpha) -> bool:
    return isinstance(alpha, Tensor) or alpha >= 0


def _alpha_t(t: Tensor, alpha: Alpha) -> Tensor:
    # alpha for positives, 1 - alpha for negatives, linear in soft targets (as torchvision).
    return t * (2.0 * alpha - 1.0) + (1.0 - alpha)


def focal_kernel(gamma: float, alpha: Alpha) -> Kernel:
    """Per-element FL and its gradient for (soft) targets t in [0, 1]."""

    def kernel(x: Tensor, t: Tensor, need_grad: bool):
        log_p = F.logsigmoid(x)  # log p
        log_1mp = F.logsigmoid(-x)  # log(1 - p), exact where p ~ 1
        p, one_m_p = log_p.exp(), log_1mp.exp()
        one_m_t = 1.0 - t
        ce = (one_m_t * x).sub_(log_p)  # BCE(x, t) as torch computes it (the value)
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
        a_t = _alpha_t(t, alpha) if _weighted(alpha) else None
        if a_t is not None:
            loss = loss.mul_(a_t) if loss is not ce else loss * a_t
        if not need_grad:
            return loss, None
        # d/dx = alpha_t [ (p - t) q^g - g ce q^(g-1) p (1-p) (2t-1) ], with p - t written
        # without cancellation and q^(g-1) p (1-p) as q^g * (p (1-p) / q), 0 where q = 0.
        grad = (one_m_t * p).sub_(t * one_m_p)
        if mod is not None:
            ratio = (p * one_m_p).div_(q.clamp_min(torch.finfo(q.dtype).tiny))
            ce_exact = -(t * log_p).add_(one_m_t * log_1mp)  # no cancellation
            grad = grad.sub_(ratio.mul_(ce_exact).mul_(2.0 * t - 1.0).mul_(gamma)).mul_(mod)
        if a_t is not None:
            grad = grad.mul_(a_t)
        return loss, grad

    return kernel


def binary_focal_kernel(gamma: float, alpha: Alpha) -> Kernel:
    """FL and its gradient for binary targets t in {0, 1} (bool or float); elementwise.

    Also carries ``sum_into``, the fused form used for "sum"/"mean": it never materializes the
    elementwise loss and writes the gradient straight into the output buffer.
    """

    def terms(x: Tensor, pos: Tensor):
        # -log p_t as torch's BCE computes it: -log_sigmoid(x) for positives, x - log_sigmoid(x)
        # for negatives; with x_n = -x_t, 1 - p_t = sigmoid(x_n), exact.
        x_n = torch.where(pos, x.neg(), x)
        log_sig = F.logsigmoid(x)
        ce = torch.where(pos, log_sig.neg(), x - log_sig)  # the value
        q = torch.sigmoid(x_n)
        mod = None if gamma == 0 else (q if gamma == 1 else (q * q if gamma == 2 else q.pow(gamma)))
        return ce, q, mod, x_n

    def alphas(x: Tensor, weight: Optional[Tensor]):
        if isinstance(alpha, Tensor):  # per class: (K,), broadcast over rows
            a_pos = alpha.to(x.dtype)
            return (a_pos, 1.0 - a_pos) if weight is None else (weight * a_pos,
                                                                  weight * (1.0 - a_pos))
        a_pos, a_neg = (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)
        if weight is None:
            return (torch.tensor(a_pos, dtype=x.dtype, device=x.device),
                    torch.tensor(a_neg, dtype=x.dtype, device=x.device))
        return weight * a_pos, weight * a_neg

    def grad_terms(x_n, q, mod):
        # dFL/dx = -y alpha_t (1 - p_t)^gamma (gamma p_t (-log p_t) + (1 - p_t)), with
        # -log p_t = softplus(x_n), free of the value's (torch-rounded) cancellation
        if gamma == 0:
            return q
        m = torch.addcmul(q, 1.0 - q, F.softplus(x_n), value=gamma)
        return m.mul_(mod)

    def kernel(x: Tensor, t: Tensor, need_grad: bool):
        pos = t if t.dtype == torch.bool else t > 0.5
        ce, q, mod, x_n = terms(x, pos)
        a_pos, a_neg = alphas(x, None)
        at = torch.where(pos, a_pos, a_neg)
        loss = (ce * mod if mod is not None else ce).mul_(at)
        if not need_grad:
            return loss, None
        return loss, grad_terms(x_n, q, mod).mul_(torch.where(pos, -a_pos, a_neg))

    def sum_into(x: Tensor, t: Tensor, weight: Optional[Tensor], grad_out: Optional[Tensor]):
        if t.dtype != torch.bool and not is_binary(t):
            return None
        pos = t if t.dtype == torch.bool else t > 0.5
        ce, q, mod, x_n = terms(x, pos)
        a_pos, a_neg = alphas(x, weight)
        lm = ce * mod if mod is not None else ce
        total = lm.mul_(torch.where(pos, a_pos, a_neg)).sum()  # cascade sum: accurate
        if grad_out is not None:
            torch.mul(grad_terms(x_n, q, mod), torch.where(pos, -a_pos, a_neg), out=grad_out)
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


def focal_loss_kernel(gamma: float, alpha: Alpha) -> Kernel:
    """FL kernel for float targets: the binary fast path where targets are 0/1."""
    return with_binary_fast_path(binary_focal_kernel(gamma, alpha), focal_kernel(gamma, alpha))


def focal_star_kernel(gamma: float, beta: float, alpha: Alpha) -> Kernel:
    """Per-element FL* and its gradient for (soft) targets t in [0, 1]."""

    def kernel(x: Tensor, t: Tensor, need_grad: bool):
        y = 2.0 * t - 1.0
        z = (x * y).mul_(gamma).add_(beta)  # gamma * x_t + beta
        loss = F.logsigmoid(z).div_(-gamma)
        a_t = _alpha_t(t, alpha) if _weighted(alpha) else None
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
    scale: float = 1.0,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Apply ``kernel`` to row-chunks of ``x2d`` (R, C).

    ``targets_of(start, end)`` returns the (rows, C) float targets of rows [start, end) and an
    optional (rows, 1) weight (0 drops a row, e.g. ignored anchors). Returns the loss (sum as a
    0-dim tensor, or (R, C) elementwise) and the gradient (R, C) in x2d's dtype, or None, both
    times ``scale``.

    Half-precision x2d (bfloat16, float16) is converted chunk by chunk, never as a float32 copy
    of the whole tensor; the gradient is computed and scaled in float32 and rounded to x2d's
    dtype once. Float32 and float64 x2d are computed in place and scaled once at the end.
    """
    rows, cols = x2d.shape
    cdtype = compute_dtype(x2d.dtype)
    half = x2d.dtype != cdtype
    # half: scale each float32 chunk before its one rounding; else scale the whole result once
    chunk_scale = scale if half else 1.0
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    out = x2d.new_empty((rows, cols), dtype=cdtype) if elementwise else None
    grad = x2d.new_empty((rows, cols)) if need_grad else None
    sum_into = None if elementwise else getattr(kernel, "sum_into", None)
    partial_sums = []
    for start in range(0, rows, step):
        end = min(start + step, rows)
        x = x2d[start:end].to(cdtype)  # a no-op unless half
        t, weight = targets_of(start, end)
        if sum_into is not None:
            # straight into the output (a half output rounds the float32 product once), or
            # through a float32 chunk when it must be scaled first
            buf = None
            if need_grad:
                buf = grad[start:end] if chunk_scale == 1.0 else torch.empty_like(x)
            partial = sum_into(x, t, weight, buf)
            if partial is not None:
                partial_sums.append(partial)
                if need_grad and chunk_scale != 1.0:
                    grad[start:end] = buf.mul_(chunk_scale)
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
            grad[start:end] = g.mul_(chunk_scale) if chunk_scale != 1.0 else g
    if elementwise:
        if scale != 1.0:
            out = out * scale
    else:
        total = torch.stack(partial_sums).sum() if partial_sums else x2d.new_zeros((), dtype=torch.float64)
        out = (total * scale if scale != 1.0 else total).to(cdtype)  # rounded once
    if grad is not None and scale != 1.0 and not half:
        grad = grad.mul_(scale)
    return out, grad


def kernel_for(spec, binary: bool = False, alpha: Optional[Alpha] = None) -> Kernel:
    """The plain-PyTorch kernel of a ``focal_det.kernels.LossSpec`` (the reference backend);
    ``binary``: targets are known to be 0/1 (the label path); ``alpha``: the spec's per-class
    alpha on the data's device (default: the spec's own alpha values)."""
    if alpha is None:
        alpha = spec.class_alpha if spec.class_alpha is not None else spec.alpha
    if spec.star:
        return focal_star_kernel(spec.gamma, spec.beta, alpha)
    if binary:
        return binary_focal_kernel(spec.gamma, alpha)
    return focal_loss_kernel(spec.gamma, alpha)


def reference_loss(x2d: Tensor, labels: Optional[Tensor], targets: Optional[Tensor], spec,
                   elementwise: bool, scale: float, need_grad: bool):
    """Loss and gradient of ``spec`` (a :class:`LossSpec` or a :data:`Kernel`) on ``x2d`` (R, K)
    with integer ``labels`` (R,) or float ``targets`` (R, K); the backends' common signature."""
    cdtype = compute_dtype(x2d.dtype)
    if isinstance(spec, LossSpec):
        alpha = spec.alpha_for(x2d.shape[1], x2d.device, cdtype)
        kernel = kernel_for(spec, binary=labels is not None, alpha=alpha)
    else:
        kernel = spec
    if labels is not None:
        classes = torch.arange(x2d.shape[1], device=x2d.device)

        def targets_of(start: int, end: int):
            lab = labels[start:end, None]
            return lab == classes, (lab >= 0).to(cdtype)  # bool targets, row weights
    else:
        def targets_of(start: int, end: int):
            return targets[start:end], None
    return run_chunked(x2d, targets_of, kernel, elementwise=elementwise, need_grad=need_grad,
                       scale=scale)
