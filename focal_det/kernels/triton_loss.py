"""The fused sigmoid classification loss as a Triton kernel (the CUDA fast path).

One kernel launch computes every element's loss and closed-form gradient (Appendix B) and, for
"sum"/"mean", one partial sum per program; the partial sums are then added by one
``torch.sum`` in float64. No atomics, so the same inputs give the same bits.

Formulas and the exact binary form are those of ``focal_det/kernels/csrc/sigmoid_loss_cpu.cpp``
and ``focal_det.losses.functional``; see there. ``log1p`` is written with Kahan's trick
(``log(1+u) * u / ((1+u) - 1)``), accurate where ``exp(-|x|)`` is below float32's epsilon.

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the same kernel runs on CPU
tensors, which is how the test suite checks it without a GPU.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (e.g. CPU-only torch wheels): the CUDA fast path is absent
    triton = None

BLOCK = 1024

if triton is not None:

    @triton.jit
    def _logistic(x):
        # softplus(x), softplus(-x), sigmoid(x), sigmoid(-x) from one exp and one log.
        e = tl.exp(-tl.abs(x))
        v = 1.0 + e
        d = v - 1.0
        l = tl.where(d == 0.0, e, tl.log(v) * e / tl.where(d == 0.0, 1.0, d))  # log1p(e), Kahan
        inv = 1.0 / v
        pos = x >= 0
        p = tl.where(pos, inv, e * inv)
        one_m_p = tl.where(pos, e * inv, inv)
        sp_pos = tl.maximum(x, 0.0) + l
        sp_neg = tl.maximum(-x, 0.0) + l
        return sp_pos, sp_neg, p, one_m_p

    @triton.jit
    def _power(q, gamma, GAMMA_CASE: tl.constexpr, TINY: tl.constexpr):
        # GAMMA_CASE: 0 -> gamma 0, 1 -> gamma 1, 2 -> gamma 2, 3 -> any other gamma > 0
        if GAMMA_CASE == 0:
            r = q * 0.0 + 1.0
        elif GAMMA_CASE == 1:
            r = q
        elif GAMMA_CASE == 2:
            r = q * q
        else:
            # The clamp keeps log finite (q = 0 is selected away). TINY is the compute dtype's
            # smallest normal: Triton types a float literal outside float32's normal range as
            # float64, and HEAD's 1e-38 here once promoted this branch and everything computed
            # from it, down to the stored gradient, to float64 (bfloat16 gradients of 0 under
            # TRITON_INTERPRET=1, whose float64 -> bfloat16 cast is an integer conversion;
            # float64 arithmetic on a GPU; float64 q below 1e-38 clamped).
            r = tl.where(q > 0, tl.exp(gamma * tl.log(tl.maximum(q, TINY))), 0.0)
        return r

    @triton.jit
    def _focal(x, t, a_t, gamma, GAMMA_CASE: tl.constexpr, SOFT: tl.constexpr,
               TINY: tl.constexpr, POW_FROM_LOG: tl.constexpr = False):
        # FL and its gradient, a_t the alpha_t weight of each element; gamma a scalar or one
        # value per element (a per-class gamma, GAMMA_CASE 3). SOFT: t may be soft, not 0/1.
        # POW_FROM_LOG: the binary form's (1 - p_t)^gamma as exp(-gamma * softplus(x_t)), one
        # exp instead of a log and an exp (the per-class kernel's arbitrary gammas).
        sp_pos, sp_neg, p, one_m_p = _logistic(x)
        is_pos = t == 1.0
        # exact binary form (t in {0, 1}); -log p_t as torch's BCE computes it:
        # -log_sigmoid(x) (= sp_neg) for positives, x - log_sigmoid(x) for negatives
        ce_b = tl.where(is_pos, sp_neg, x + sp_neg)
        ce_exact = tl.where(is_pos, sp_neg, sp_pos)  # no cancellation: for the gradient
        q_b = tl.where(is_pos, one_m_p, p)
        p_t = tl.where(is_pos, p, one_m_p)
        if POW_FROM_LOG:
            mod_b = tl.where(gamma == 2.0, q_b * q_b,  # FL's own gamma: exactly FL's
                             tl.exp(-gamma * tl.where(is_pos, sp_pos, sp_neg)))
        else:
            mod_b = _power(q_b, gamma, GAMMA_CASE, TINY)
        if GAMMA_CASE == 0:
            m = q_b
        else:
            m = q_b + gamma * p_t * ce_exact
        loss = a_t * ce_b * mod_b
        grad = tl.where(is_pos, -a_t, a_t) * m * mod_b
        if SOFT:  # soft targets: the general form
            one_m_t = 1.0 - t
            ce = one_m_t * x + sp_neg  # (1 - t) x - log_sigmoid(x), as torch
            q = t * one_m_p + one_m_t * p
            mod = _power(q, gamma, GAMMA_CASE, TINY)
            g = one_m_t * p - t * one_m_p
            if GAMMA_CASE != 0:
                ratio = p * one_m_p / tl.maximum(q, TINY)
                ce_x = t * sp_neg + one_m_t * sp_pos  # no cancellation: the gradient
                g = (g - gamma * ce_x * (2.0 * t - 1.0) * ratio) * mod
            soft = (t != 0.0) & (t != 1.0)
            loss = tl.where(soft, a_t * ce * mod, loss)
            grad = tl.where(soft, a_t * g, grad)
        return loss, grad

    @triton.jit
    def _bf16_rne(v):
        # float32 -> bfloat16 rounded to nearest even by integer ops, as torch and the GPU's
        # cvt.rn do (the interpreter's own float32 -> bfloat16 cast truncates); NaN stays NaN
        b = v.to(tl.uint32, bitcast=True)
        r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        r = tl.where(v == v, r, 0x7FC0)
        return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def _sigmoid_loss_kernel(
        x_ptr, lab_ptr, t_ptr, loss_ptr, grad_ptr, part_ptr, alpha_ptr, N, K,
        gamma, alpha, beta, scale,
        STAR: tl.constexpr, GAMMA_CASE: tl.constexpr, WEIGHTED: tl.constexpr,
        CLASS_ALPHA: tl.constexpr, LABELS: tl.constexpr, ELEMENTWISE: tl.constexpr,
        NEED_GRAD: tl.constexpr, F64: tl.constexpr, BF16: tl.constexpr, TINY: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        ct = tl.float64 if F64 else tl.float32
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ct)
        if LABELS:
            row = offs // K
            lab = tl.load(lab_ptr + row, mask=mask, other=-1)
            t = tl.where(lab == offs - row * K, 1.0, 0.0).to(ct)
            keep = mask & (lab >= 0)
        else:
            t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(ct)
            keep = mask
        if CLASS_ALPHA:  # alpha of this element's class (column)
            a = tl.load(alpha_ptr + offs % K, mask=mask, other=0.0).to(ct)
            a_t = t * (2.0 * a - 1.0) + (1.0 - a)
        elif WEIGHTED:
            a_t = t * (2.0 * alpha - 1.0) + (1.0 - alpha)
        else:
            a_t = t * 0.0 + 1.0
        if STAR:
            y = 2.0 * t - 1.0
            sp_pos, sp_neg, p, one_m_p = _logistic(gamma * x * y + beta)
            loss = a_t * sp_neg / gamma
            grad = -a_t * y * one_m_p
        else:
            loss, grad = _focal(x, t, a_t, gamma, GAMMA_CASE, not LABELS, TINY)
        # every value stays in the compute dtype (no silent float64 promotion, see _power)
        tl.static_assert(loss.dtype == ct)
        tl.static_assert(grad.dtype == ct)
        loss = tl.where(keep, loss, 0.0)
        if ELEMENTWISE:
            tl.store(loss_ptr + offs, loss * scale, mask=mask)
        else:
            tl.store(part_ptr + pid, tl.sum(loss, axis=0))
        if NEED_GRAD:
            grad = tl.where(keep, grad * scale, 0.0)
            if BF16:
                tl.store(grad_ptr + offs, _bf16_rne(grad), mask=mask)
            else:
                tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def available() -> bool:
    return triton is not None


def _gamma_case(gamma: float) -> int:
    return {0.0: 0, 1.0: 1, 2.0: 2}.get(float(gamma), 3)


def sigmoid_loss(x: Tensor, labels: Optional[Tensor], targets: Optional[Tensor], star: bool,
                 gamma: float, alpha: float, beta: float, reduction: int, scale: float,
                 need_grad: bool, class_alpha: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Same contract as the C++ operator ``torch.ops.focal_det.sigmoid_loss`` (see its source)."""
    n, k = x.shape
    cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    elementwise = reduction == 0
    numel = x.numel()
    grid = (max(1, triton.cdiv(numel, BLOCK)),)
    loss = x.new_empty((n, k) if elementwise else (grid[0],), dtype=cdtype)
    grad = torch.empty_like(x) if need_grad else x.new_empty((0,))
    _sigmoid_loss_kernel[grid](
        x, labels if labels is not None else x, targets if targets is not None else x,
        loss, grad if need_grad else x, loss, class_alpha if class_alpha is not None else x,
        numel, k, float(gamma), float(alpha), float(beta), float(scale),
        STAR=bool(star), GAMMA_CASE=_gamma_case(gamma), WEIGHTED=alpha >= 0,
        CLASS_ALPHA=class_alpha is not None, LABELS=labels is not None, ELEMENTWISE=elementwise, NEED_GRAD=bool(need_grad),
        F64=cdtype == torch.float64, BF16=x.dtype == torch.bfloat16,
        TINY=torch.finfo(cdtype).tiny, BLOCK=BLOCK,
    )
    if not elementwise:
        loss = loss.sum(dtype=torch.float64).mul_(scale).to(cdtype)
    return loss, grad
