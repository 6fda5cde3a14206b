"""The per-class sigmoid FL as a Triton kernel (the CUDA fast path of Equalized Focal Loss):
a focusing parameter and a weight per class, and the per-class sums of the gradient's magnitude
over positives and negatives, in the same pass. Same contract as the C++ operator
``torch.ops.focal_det.sigmoid_loss_per_class`` (``kernels/csrc/per_class_loss_cpu.cpp``).

Each program owns a tile of up to ``BK`` classes and a fixed range of rows, walked ``BR`` rows at
a time, and keeps float64 per-class accumulators (loss, positive and negative |gradient|) in
registers; its partial sums go to a buffer of (row programs, ...) that one ``torch.sum`` reduces
in a fixed order. No atomics, so the same inputs give the same bits. The number of row programs
depends on R only (at most ``ROW_PROGRAMS``), so the partial buffer is small: 256 x 2 x K
float64 (4.9 MB at K = 1203). The per-element math is ``triton_loss._focal``, shared with the FL
kernel.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .triton_loss import BLOCK, triton

ROW_PROGRAMS = 256

if triton is not None:
    import triton.language as tl

    from .triton_loss import _bf16_rne, _focal

    @triton.jit
    def _per_class_kernel(
        x_ptr, lab_ptr, t_ptr, loss_ptr, grad_ptr, part_ptr, stats_ptr, alpha_ptr, gamma_ptr,
        weight_ptr, R, K, iters, alpha, scale,
        WEIGHTED: tl.constexpr, CLASS_ALPHA: tl.constexpr, CLASS_WEIGHT: tl.constexpr,
        LABELS: tl.constexpr, SOFT: tl.constexpr, ELEMENTWISE: tl.constexpr,
        NEED_GRAD: tl.constexpr, NEED_STATS: tl.constexpr, F64: tl.constexpr,
        BF16: tl.constexpr, GAMMA_CASE: tl.constexpr, TINY: tl.constexpr, BR: tl.constexpr,
        BK: tl.constexpr,
    ):
        pid_r = tl.program_id(0)
        pid_k = tl.program_id(1)
        ct = tl.float64 if F64 else tl.float32
        cols = pid_k * BK + tl.arange(0, BK)
        cmask = cols < K
        gamma = tl.load(gamma_ptr + cols, mask=cmask, other=1.0).to(ct)[None, :]
        if CLASS_ALPHA:
            a = tl.load(alpha_ptr + cols, mask=cmask, other=0.0).to(ct)[None, :]
        if CLASS_WEIGHT:
            w = tl.load(weight_ptr + cols, mask=cmask, other=0.0).to(ct)[None, :]
        acc = tl.zeros((BK,), dtype=tl.float64)
        pos_acc = tl.zeros((BK,), dtype=tl.float64)
        neg_acc = tl.zeros((BK,), dtype=tl.float64)
        row0 = pid_r.to(tl.int64) * iters * BR
        for i in range(0, iters):
            rows = row0 + i * BR + tl.arange(0, BR)
            rmask = rows < R
            mask = rmask[:, None] & cmask[None, :]
            offs = rows[:, None] * K + cols[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ct)
            if LABELS:
                lab = tl.load(lab_ptr + rows, mask=rmask, other=-1)
                t = tl.where(lab[:, None] == cols[None, :], 1.0, 0.0).to(ct)
                keep = mask & (lab[:, None] >= 0)
            else:
                t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(ct)
                keep = mask
            if CLASS_ALPHA:
                a_t = t * (2.0 * a - 1.0) + (1.0 - a)
            elif WEIGHTED:
                a_t = t * (2.0 * alpha - 1.0) + (1.0 - alpha)
            else:
                a_t = t * 0.0 + 1.0
            if CLASS_WEIGHT:
                a_t = a_t * w
            loss, grad = _focal(x, t, a_t, gamma, GAMMA_CASE, SOFT, TINY, True)
            tl.static_assert(loss.dtype == ct)
            tl.static_assert(grad.dtype == ct)
            loss = tl.where(keep, loss, 0.0)
            grad = tl.where(keep, grad * scale, 0.0)
            if ELEMENTWISE:
                tl.store(loss_ptr + offs, loss * scale, mask=mask)
            else:
                acc += tl.sum(loss, axis=0).to(tl.float64)
            if NEED_GRAD:
                if BF16:
                    tl.store(grad_ptr + offs, _bf16_rne(grad), mask=mask)
                else:
                    tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)
            if NEED_STATS:
                mag = tl.abs(grad)
                pos_acc += tl.sum(tl.where(t == 1.0, mag, 0.0), axis=0).to(tl.float64)
                neg_acc += tl.sum(tl.where(t == 1.0, 0.0, mag), axis=0).to(tl.float64)
        if not ELEMENTWISE:
            tl.store(part_ptr + pid_r * tl.num_programs(1) + pid_k, tl.sum(acc, axis=0))
        if NEED_STATS:
            base = stats_ptr + pid_r.to(tl.int64) * 2 * K
            tl.store(base + cols, pos_acc, mask=cmask)
            tl.store(base + K + cols, neg_acc, mask=cmask)


def _layout(rows: int, k: int):
    """(BR, BK, row programs, iterations per row program): fixed by R and K."""
    bk = max(16, min(128, triton.next_power_of_2(max(k, 1))))
    br = max(1, BLOCK // bk)
    programs = max(1, min(triton.cdiv(rows, br), ROW_PROGRAMS))
    iters = max(1, triton.cdiv(triton.cdiv(rows, programs), br))
    programs = max(1, triton.cdiv(rows, iters * br))
    return br, bk, programs, iters


def sigmoid_loss_per_class(x: Tensor, labels: Optional[Tensor], targets: Optional[Tensor],
                           alpha: float, reduction: int, scale: float, need_grad: bool,
                           class_alpha: Optional[Tensor], class_gamma: Tensor,
                           class_weight: Optional[Tensor],
                           need_stats: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Same contract as ``torch.ops.focal_det.sigmoid_loss_per_class`` (see its source)."""
    if need_stats and labels is None:
        raise ValueError("per-class gradient sums need labels (positives are the labelled class)")
    n, k = x.shape
    cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    br, bk, programs, iters = _layout(n, k)
    grid = (programs, triton.cdiv(k, bk))
    elementwise = reduction == 0
    loss = x.new_empty((n, k) if elementwise else grid, dtype=cdtype if elementwise
                       else torch.float64)
    grad = torch.empty_like(x) if need_grad else x.new_empty((0,))
    stats = x.new_empty((programs, 2, k) if need_stats else (0,), dtype=torch.float64)
    _per_class_kernel[grid](
        x, labels if labels is not None else x, targets if targets is not None else x,
        loss, grad if need_grad else x, loss, stats, class_alpha if class_alpha is not None
        else x, class_gamma, class_weight if class_weight is not None else x,
        n, k, iters, float(alpha), float(scale),
        WEIGHTED=class_alpha is not None or alpha >= 0, CLASS_ALPHA=class_alpha is not None,
        CLASS_WEIGHT=class_weight is not None, LABELS=labels is not None,
        SOFT=labels is None, ELEMENTWISE=elementwise, NEED_GRAD=bool(need_grad),
        NEED_STATS=bool(need_stats), F64=cdtype == torch.float64,
        BF16=x.dtype == torch.bfloat16, GAMMA_CASE=3, TINY=torch.finfo(cdtype).tiny, BR=br,
        BK=bk,
    )
    if not elementwise:
        loss = loss.sum().mul_(scale).to(cdtype)
    out_stats = stats.sum(0).to(cdtype) if need_stats else x.new_empty((0, k), dtype=cdtype)
    return loss, grad, out_stats
