"""Softmax focal loss (Detectron's ``RETINANET.SOFTMAX``, the paper's released code): K + 1
logits per anchor (the K classes, then background), focal modulation on the softmax p_t.

Shapes: ``logits`` (..., K + 1), ``labels`` (...) int64 in [0, K) (class), K (background) or -1
(ignored). Per row: FL = -alpha_t (1 - p_t)^gamma log p_t, p_t = softmax(x)[label], alpha_t =
alpha for a class label, 1 - alpha for background (alpha < 0: no weighting), as Detectron.
Gradient (closed form): dFL/dx_j = w (p_j - [j = label]), w = alpha_t ((1 - p_t)^gamma -
gamma (1 - p_t)^(gamma - 1) p_t log p_t).

Computed by :class:`_SoftmaxFocal`, loss and gradient together, chunk by chunk of rows in plain
PyTorch ops (any device and dtype; only the gradient is saved for backward, which is one
multiply). There is no C++/Triton kernel for it yet (the sigmoid family has them): it runs
as these few fused-by-hand ops on CPU and CUDA alike.

Scores at inference are the softmax without the background column; the prior initialization
is Detectron's: background bias log(K (1 - pi) / pi), class biases 0, so an anchor starts at
background probability 1 - pi, the foreground's pi shared by the K classes.
"""
import math

import torch
from detectron2.config import configurable
from torch import Tensor
from torch.autograd.function import once_differentiable

from .base import ClassificationLoss, check_reduction
from .registry import CLS_LOSS_REGISTRY, _KEY, check_prior

CHUNK_ELEMENTS = 1 << 18


def _rows(logits: Tensor, labels: Tensor, gamma: float, alpha: float, need_grad: bool):
    """Loss per row (R,) and gradient (R, C) of one chunk, in the compute dtype."""
    c = logits.shape[1]
    valid = labels >= 0
    y = labels.clamp_min(0)
    logp = torch.log_softmax(logits, dim=1)
    lp_t = logp.gather(1, y[:, None])[:, 0]  # log p_t
    q = -torch.expm1(lp_t)  # 1 - p_t without cancellation
    mod = q.pow(gamma) if gamma != 0 else torch.ones_like(q)
    if alpha >= 0:
        a_t = torch.where(y == c - 1, torch.full_like(q, 1.0 - alpha), torch.full_like(q, alpha))
    else:
        a_t = torch.ones_like(q)
    a_t = a_t * valid
    loss = -(a_t * mod * lp_t)
    if not need_grad:
        return loss, None
    p_t = lp_t.exp()
    if gamma != 0:
        # q^(gamma-1) p_t log p_t as mod * p_t * (log p_t / q): log p_t / q is bounded (-> -1
        # as q -> 0, 0 where q = 0). Not gamma * (p_t / q) * log p_t: p_t / q reaches 1 / tiny
        # where q is float32's smallest normal, and gamma times that overflows for gamma > 4
        # (inf * 0 = NaN gradients).
        lp_over_q = lp_t / q.clamp_min(torch.finfo(q.dtype).tiny)
        w = a_t * mod * (1.0 - gamma * p_t * lp_over_q)
    else:
        w = a_t
    grad = logp.exp().mul_(w[:, None])
    grad.scatter_add_(1, y[:, None], -w[:, None])
    return loss, grad


class _SoftmaxFocal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, gamma, alpha):
        c = logits.shape[-1]
        x = logits.reshape(-1, c)
        lab = labels.reshape(-1).long()
        cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        need_grad = ctx.needs_input_grad[0]
        step = max(1, CHUNK_ELEMENTS // c)
        total = x.new_zeros((), dtype=torch.float64)
        grad = torch.empty_like(x) if need_grad else None
        for start in range(0, x.shape[0], step):
            end = min(start + step, x.shape[0])
            loss, g = _rows(x[start:end].to(cdtype), lab[start:end], gamma, alpha, need_grad)
            total = total + loss.sum(dtype=torch.float64)
            if need_grad:
                grad[start:end] = g
        if need_grad:
            ctx.save_for_backward(grad.view(logits.shape))
        return total.to(cdtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        # grad_out (0-dim, float32 for half logits) is not rounded to the half dtype first: the
        # product with the saved (once-rounded) gradient is computed in float32, rounded once
        out = grad * grad_out
        if out.dtype != grad.dtype:
            out = out.to(grad.dtype)
        return out, None, None, None


@CLS_LOSS_REGISTRY.register()
class SoftmaxFocalLoss(ClassificationLoss):
    """Softmax FL over K + 1 logits (see module docstring). ``MODEL.FOCAL_DET.CLS_LOSS.NAME:
    SoftmaxFocalLoss`` with ``GAMMA`` and ``ALPHA``; the model then predicts K + 1 logits per
    anchor."""

    probs_elementwise = False  # a class's score depends on every logit of its anchor

    @configurable
    def __init__(self, *, gamma: float = 2.0, alpha: float = 0.25):
        if not gamma >= 0:
            raise ValueError(f"{_KEY}.GAMMA={gamma!r}: the focusing parameter must be >= 0")
        if not (alpha < 0 or 0.0 <= alpha <= 1.0):
            raise ValueError(f"{_KEY}.ALPHA={alpha!r}: must be in [0, 1], or negative for none")
        self.gamma, self.alpha = float(gamma), float(alpha)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FOCAL_DET.CLS_LOSS
        if list(c.get("ALPHA_PER_CLASS", [])):
            raise ValueError(f"{_KEY}.ALPHA_PER_CLASS is for the sigmoid losses; "
                             "SoftmaxFocalLoss takes one ALPHA")
        return {"gamma": c.GAMMA, "alpha": c.ALPHA}

    def num_logits(self, num_classes: int) -> int:
        return num_classes + 1  # background last

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss summed over non-ignored rows; ``logits`` (..., K + 1)."""
        rows = logits.numel() // max(logits.shape[-1], 1)
        if labels.numel() != rows:
            raise ValueError(f"labels has {labels.numel()} entries for {rows} rows of logits")
        return _SoftmaxFocal.apply(logits, labels, self.gamma, self.alpha)

    def _per_row(self, logits: Tensor, labels: Tensor, need_grad: bool):
        c = logits.shape[-1]
        cdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return _rows(logits.detach().reshape(-1, c).to(cdtype), labels.reshape(-1).long(),
                     self.gamma, self.alpha, need_grad)

    @torch.no_grad()
    def per_anchor(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self._per_row(logits, labels, False)[0].view(labels.shape)

    def loss(self, logits: Tensor, targets: Tensor, reduction: str = "sum") -> Tensor:
        """With one-hot ``targets`` of logits' shape (background column last); "none" gives
        one term per row (...)."""
        check_reduction(reduction)
        if targets.shape != logits.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} != logits shape "
                             f"{tuple(logits.shape)}")
        labels = targets.argmax(-1)
        if reduction == "sum":
            return self(logits, labels)
        if reduction == "mean":
            return self(logits, labels) / max(labels.numel(), 1)
        need_grad = logits.requires_grad and torch.is_grad_enabled()
        loss, grad = self._per_row(logits, labels, need_grad)
        if need_grad:  # a row's loss depends on its own logits only: attach the closed form
            x = logits.reshape(grad.shape)
            loss = loss + ((x - x.detach()) * grad).sum(-1)  # adds exact zeros
        return loss.view(labels.shape)

    def probs(self, logits: Tensor) -> Tensor:
        """Class scores: the softmax over K + 1 logits without the background column."""
        return torch.softmax(logits, dim=-1)[..., :-1]

    def prior_bias(self, prior_prob: float, num_classes: int) -> Tensor:
        """Detectron's rule: class biases 0, background log(K (1 - pi) / pi), so an anchor
        starts at background probability 1 - pi, the foreground's pi shared by the K classes."""
        check_prior(prior_prob)
        bias = torch.zeros(num_classes + 1, dtype=torch.float64)
        bias[-1] = math.log(num_classes * (1.0 - prior_prob) / prior_prob)
        return bias

    def __repr__(self):
        return f"SoftmaxFocalLoss(gamma={self.gamma}, alpha={self.alpha})"


def softmax_focal_loss(logits: Tensor, labels: Tensor, gamma: float = 2.0,
                       alpha: float = 0.25) -> Tensor:
    """Functional form: the softmax FL of ``logits`` (..., K + 1) with ``labels`` (...),
    summed over non-ignored rows."""
    return SoftmaxFocalLoss(gamma=gamma, alpha=alpha)(logits, labels)


__all__ = ["SoftmaxFocalLoss", "softmax_focal_loss"]
