"""Fused sigmoid classification losses: one pass per call, loss and gradient together.

Three backends compute the same numbers (tests check them against each other and against
float64 references):

- ``native``: the C++ operator ``torch.ops.focal_det.sigmoid_loss`` (``focal_det/_C``, built
  by ``pip install`` from ``kernels/csrc/sigmoid_loss_cpu.cpp``), for CPU tensors;
- ``triton``: a Triton kernel (``kernels/triton_loss.py``), for CUDA tensors; Triton ships
  with PyTorch's CUDA wheels. It also runs on CPU tensors under ``TRITON_INTERPRET=1``
  (the test suite does this);
- ``reference``: ``focal_det.kernels.reference``, plain PyTorch ops over chunks of
  rows; any device, any dtype, no compiled code. Used where neither fast path is available
  (e.g. the extension was not built, or CUDA without Triton).

``auto`` (the default) picks ``native`` on CPU, ``triton`` on CUDA, else ``reference``. Set
``FOCAL_DET_LOSS_BACKEND`` to ``native``, ``triton`` or ``reference`` to force one (an
unavailable choice is an error, not a silent fallback), or use :func:`use_backend`
(``kernels/backend.py``). If the
auto-selected Triton kernel cannot be compiled (Triton builds its launcher with the system C
compiler on first use), a warning says so and the reference computes the same numbers.

Why these mechanisms: a C++ operator compiled at install time needs no compiler at run time,
is one OpenMP region per call (robust when a DataLoader worker takes a core), and sums
deterministically; ``torch.compile`` would compile at run time (seconds, a compiler on every
user's machine) and was slower than eager for this model on CPU. On CUDA, Triton comes with
PyTorch's wheels (no nvcc at install, one kernel per call, any GPU PyTorch supports), and its
interpreter lets CI check the very same kernel on a CPU.
"""
import logging
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import triton_loss, triton_per_class
from .backend import (BACKENDS, TRITON_STATE, native_available, requested, select_backend,
                      use_backend)
from .per_class import per_class_loss
from .reference import compute_dtype, reference_loss
from .spec import LossSpec

__all__ = ["LossSpec", "fused_loss", "select_backend", "use_backend", "native_available",
           "BACKENDS"]

_REDUCTION_CODES = {"none": 0, "sum": 1, "mean": 2}
logger = logging.getLogger(__name__)


def _kernel(backend, x2d, labels, targets, spec, code, scale, need_grad, need_stats):
    k, cdtype = x2d.shape[1], compute_dtype(x2d.dtype)
    class_alpha = spec.alpha_for(k, x2d.device, cdtype)
    if spec.per_class:
        fn = (torch.ops.focal_det.sigmoid_loss_per_class if backend == "native"
              else triton_per_class.sigmoid_loss_per_class)
        loss, grad, stats = fn(x2d, labels, targets, spec.alpha, code, scale, need_grad,
                               class_alpha, spec.gamma_for(k, x2d.device, cdtype),
                               spec.weight_for(k, x2d.device, cdtype), need_stats)
        return loss, (grad if need_grad else None), (stats if need_stats else None)
    fn = torch.ops.focal_det.sigmoid_loss if backend == "native" else triton_loss.sigmoid_loss
    loss, grad = fn(x2d, labels, targets, spec.star, spec.gamma, spec.alpha, spec.beta, code,
                    scale, need_grad, class_alpha)
    return loss, (grad if need_grad else None), None


def _run(backend, x2d, labels, targets, spec, reduction, scale, need_grad, need_stats=False):
    """(loss, gradient or None, (2, K) per-class |gradient| sums or None)."""
    code = _REDUCTION_CODES[reduction]
    if backend == "triton" and requested() == "auto":
        try:
            return _kernel("triton", x2d, labels, targets, spec, code, scale, need_grad,
                           need_stats)
        except Exception as e:  # e.g. no C compiler for Triton's launcher on this machine
            TRITON_STATE.failure = f"{type(e).__name__}: {e}"
            logger.warning(f"The Triton loss kernel could not run ({TRITON_STATE.failure}); "
                           "computing the loss with plain PyTorch ops instead (same numbers, "
                           "slower). FOCAL_DET_LOSS_BACKEND=reference silences this.")
            backend = "reference"
    if backend == "reference":
        if isinstance(spec, LossSpec) and spec.per_class:
            return per_class_loss(x2d, labels, targets, spec, code == 0, scale, need_grad,
                                  need_stats)
        return (*reference_loss(x2d, labels, targets, spec, code == 0, scale, need_grad), None)
    return _kernel(backend, x2d, labels, targets, spec, code, scale, need_grad, need_stats)


class _FusedLoss(torch.autograd.Function):
    """Forward computes the loss and its closed-form gradient; backward is one multiply."""

    @staticmethod
    def forward(ctx, logits, labels, targets, spec, reduction, backend, stats_out=None):
        k = logits.shape[-1] if logits.dim() else 1
        x2d = logits.reshape(-1, k).contiguous()
        need_grad = ctx.needs_input_grad[0]
        scale = 1.0 / max(logits.numel(), 1) if reduction == "mean" else 1.0
        loss, grad, stats = _run(backend, x2d, labels, targets, spec, reduction, scale,
                                 need_grad, stats_out is not None)
        if stats is not None:
            stats_out.add_(stats)
        if reduction == "none":
            loss = loss.view(logits.shape)
        if need_grad:
            ctx.save_for_backward(grad.view(logits.shape))
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        out = grad * grad_out
        if out.dtype != grad.dtype:  # "none": float32 grad_out for half logits
            out = out.to(grad.dtype)
        return out, None, None, None, None, None, None


def fused_loss(logits: Tensor, spec: LossSpec, reduction: str, *,
               labels: Optional[Tensor] = None, targets: Optional[Tensor] = None,
               stats_out: Optional[Tensor] = None) -> Tensor:
    """The loss of ``spec`` on ``logits`` (..., K) with either integer ``labels`` (one per row
    of K logits: class index, K = background, -1 = ignored) or float ``targets`` of logits'
    shape. Returns float32 (float64 for float64 logits); its gradient has logits' dtype.
    bfloat16/float16 logits are read as they are (no float32 copy of the tensor), computed in
    float32, and the gradient (times 1/N for "mean") is rounded to their dtype once; backward
    multiplies it by the incoming gradient (e.g. 1/normalizer, a loss scale), which rounds
    once more, as any half-precision op's backward does.

    ``spec`` may also be a plain-PyTorch kernel (``focal_det.kernels.reference.Kernel``, e.g.
    a user's own loss); it then runs on the reference backend.

    ``stats_out`` (2, K), with ``labels`` and a per-class ``spec`` (``class_gamma``): the same
    pass adds to it, per class, the sums of |d loss / d logits| (the gradient this call
    returns to backward, before any rounding to logits' dtype and before backward's incoming
    gradient multiplies it) over the rows labelled with the class (row 0) and the other
    non-ignored rows (row 1); Equalized Focal Loss's statistics."""
    if stats_out is not None and (labels is None or not isinstance(spec, LossSpec)
                                  or not spec.per_class):
        raise ValueError("fused_loss: stats_out needs labels and a LossSpec with class_gamma")
    if isinstance(spec, LossSpec) and spec.per_class and spec.star:
        raise ValueError("a per-class gamma is defined for FL (LossSpec.star False), not FL*")
    backend = select_backend(logits.device) if isinstance(spec, LossSpec) else "reference"
    cdtype = compute_dtype(logits.dtype)
    if labels is not None:
        labels = labels.reshape(-1)
        if labels.dtype != torch.int64:
            labels = labels.long()
        labels = labels.contiguous()
    else:
        targets = targets.reshape(-1, logits.shape[-1] if logits.dim() else 1)
        targets = targets.to(cdtype).contiguous()
    return _FusedLoss.apply(logits, labels, targets, spec, reduction, backend, stats_out)
