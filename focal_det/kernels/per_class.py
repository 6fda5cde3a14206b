"""The per-class sigmoid FL on the ``reference`` backend: a focusing parameter and a weight per
class (Equalized Focal Loss, ``focal_det.losses.efl``), and the per-class sums of the magnitude
of its gradient over positives and negatives; the definition the per-class ``native`` and
``triton`` kernels are tested against.

Shapes: x (R, K); ``gamma``, ``weight``, per-class ``alpha`` (K,), broadcast over rows.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import CHUNK_ELEMENTS, Kernel, compute_dtype
from .spec import LossSpec

Alpha = Union[float, Tensor]


def per_class_focal_kernel(gamma: Tensor, alpha: Alpha, weight: Optional[Tensor]) -> Kernel:
    """Per-element ``weight * alpha_t * (1 - p_t)^gamma * (-log p_t)`` and its gradient for
    targets t in [0, 1], with ``gamma`` and ``weight`` (K,) tensors (``weight`` None: 1)."""
    weighted = isinstance(alpha, Tensor) or alpha >= 0

    def kernel(x: Tensor, t: Tensor, need_grad: bool):
        log_p = F.logsigmoid(x)
        log_1mp = F.logsigmoid(-x)  # log(1 - p), exact where p ~ 1
        p, one_m_p = log_p.exp(), log_1mp.exp()
        one_m_t = 1.0 - t
        ce = (one_m_t * x).sub_(log_p)  # BCE(x, t) as torch computes it (the value)
        q = (t * one_m_p).add_(one_m_t * p)  # 1 - p_t, without cancellation
        mod = q.pow(gamma)
        w = t * (2.0 * alpha - 1.0) + (1.0 - alpha) if weighted else None  # alpha_t
        if weight is not None:
            w = weight.expand_as(x) if w is None else w * weight
        loss = ce.mul_(mod) if w is None else ce.mul_(mod).mul_(w)
        if not need_grad:
            return loss, None
        # d/dx = w [ (p - t) q^g - g (-log p_t) (2t - 1) p (1 - p) q^(g - 1) ]; p (1 - p) / q is
        # 0 where q = 0; -log p_t without cancellation
        ratio = (p * one_m_p).div_(q.clamp_min(torch.finfo(q.dtype).tiny))
        ce_exact = -(t * log_p).add_(one_m_t * log_1mp)
        grad = (one_m_t * p).sub_(t * one_m_p)
        grad = grad.sub_(ratio.mul_(ce_exact).mul_(2.0 * t - 1.0).mul_(gamma)).mul_(mod)
        return loss, (grad if w is None else grad.mul_(w))

    return kernel


def per_class_loss(x2d: Tensor, labels: Optional[Tensor], targets: Optional[Tensor],
                   spec: LossSpec, elementwise: bool, scale: float, need_grad: bool,
                   need_stats: bool) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Loss, gradient and per-class sums of ``spec`` (its ``class_gamma`` set) on ``x2d``
    (R, K), the per-class kernels' contract (``kernels/csrc/per_class_loss_cpu.cpp``): the sum
    (0-dim) or (R, K) loss and the (R, K) gradient in x2d's dtype, both times ``scale``, and
    with ``need_stats`` (labels only) the (2, K) sums of |gradient| over positives (row 0) and
    non-ignored negatives (row 1), of the gradient's values before their rounding to x2d's
    dtype. Chunks of rows; half-precision x2d is converted chunk by chunk."""
    if need_stats and labels is None:
        raise ValueError("per-class gradient sums need labels (positives are the labelled class)")
    rows, k = x2d.shape
    cdtype = compute_dtype(x2d.dtype)
    alpha = spec.alpha_for(k, x2d.device, cdtype)
    kernel = per_class_focal_kernel(spec.gamma_for(k, x2d.device, cdtype),
                                    spec.alpha if alpha is None else alpha,
                                    spec.weight_for(k, x2d.device, cdtype))
    classes = torch.arange(k, device=x2d.device)
    out = x2d.new_empty((rows, k), dtype=cdtype) if elementwise else None
    grad = x2d.new_empty((rows, k)) if need_grad else None
    stats = x2d.new_zeros((2, k), dtype=torch.float64) if need_stats else None
    partial_sums = []
    step = max(1, CHUNK_ELEMENTS // max(k, 1))
    for start in range(0, rows, step):
        end = min(start + step, rows)
        x = x2d[start:end].to(cdtype)
        if labels is not None:
            lab = labels[start:end, None]
            pos = lab == classes
            t, keep = pos.to(cdtype), (lab >= 0).to(cdtype)
        else:
            t, keep = targets[start:end], None
        loss, g = kernel(x, t, need_grad or need_stats)
        if keep is not None:
            loss = loss.mul_(keep)
            g = g.mul_(keep) if g is not None else None
        if g is not None and scale != 1.0:
            g = g.mul_(scale)
        if elementwise:
            out[start:end] = loss * scale if scale != 1.0 else loss
        else:
            partial_sums.append(loss.sum(dtype=torch.float64))
        if need_grad:
            grad[start:end] = g
        if need_stats:
            mag = g.abs().double()
            stats[0] += (mag * pos).sum(0)
            stats[1] += (mag * ~pos).sum(0)  # ignored rows: g is 0
    if not elementwise:
        total = torch.stack(partial_sums).sum() if partial_sums else x2d.new_zeros(
            (), dtype=torch.float64)
        out = (total * scale).to(cdtype)
    return out, grad, (stats.to(cdtype) if need_stats else None)
