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
from typing import Optional

import torch
from detectron2.config import configurable
from torch import Tensor
from torch.autograd.function import once_differentiable

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
    if gamma != 0:  # q^(gamma-1) p_t as mod * p_t / q (0 where q = 0)
        ratio = p_t / q.clamp_min(torch.finfo(q.dtype).tiny)
        w = a_t * mod * (1.0 - gamma * ratio * lp_t)
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
        return grad * grad_out.to(grad.dtype), None, None, None


@CLS_LOSS_REGISTRY.register()
class SoftmaxFocalLoss:
    """Softmax FL over K + 1 logits (see module docstring). ``MODEL.FOCAL_DET.CLS_LOSS.NAME:
    SoftmaxFocalLoss`` with ``GAMMA`` and ``ALPHA``; the model then predicts K + 1 logits per
    anchor."""

    background_logit = True  # K + 1 logits per anchor, background last
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

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss summed over non-ignored rows; ``logits`` (..., K + 1)."""
        rows = logits.numel() // max(logits.shape[-1], 1)
        if labels.numel() != rows:
            raise ValueError(f"labels has {labels.numel()} entries for {rows} rows of logits")
        return _SoftmaxFocal.apply(logits, labels, self.gamma, self.alpha)

    def per_anchor(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Each row's loss (0 for ignored rows), no gradient (what OHEM ranks anchors by)."""
        with torch.no_grad():
            c = logits.shape[-1]
            cdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
            loss, _ = _rows(logits.reshape(-1, c).to(cdtype), labels.reshape(-1).long(),
                            self.gamma, self.alpha, False)
            return loss.view(labels.shape)

    def loss(self, logits: Tensor, targets: Tensor, reduction: str = "sum") -> Tensor:
        """With one-hot ``targets`` of logits' shape (background column last)."""
        labels = targets.argmax(-1)
        if reduction == "sum":
            return self(logits, labels)
        raise ValueError(f"SoftmaxFocalLoss.loss: reduction {reduction!r} is not supported; "
                         "use 'sum'")

    def probs(self, logits: Tensor) -> Tensor:
        """Class scores: the softmax over K + 1 logits without the background column."""
        return torch.softmax(logits, dim=-1)[..., :-1]

    def probs_affine(self) -> Optional[tuple]:
        return None  # not an elementwise sigmoid: TorchScript scripting is refused

    def class_bias_pattern(self, bias_init: str, prior: float, num_classes: int) -> Tensor:
        """The K + 1 biases of one anchor: Detectron's rule for ``PriorProb``, zeros for
        ``Zero`` (background and classes equally likely)."""
        bias = torch.zeros(num_classes + 1)
        if bias_init == "PriorProb":
            check_prior(prior)
            bias[-1] = math.log(num_classes * (1.0 - prior) / prior)
        elif bias_init != "Zero":
            raise ValueError(f"MODEL.FOCAL_DET.HEAD.BIAS_INIT={bias_init!r}: SoftmaxFocalLoss "
                             "supports PriorProb and Zero")
        return bias

    def __repr__(self):
        return f"SoftmaxFocalLoss(gamma={self.gamma}, alpha={self.alpha})"


def softmax_focal_loss(logits: Tensor, labels: Tensor, gamma: float = 2.0,
                       alpha: float = 0.25) -> Tensor:
    """Functional form: the softmax FL of ``logits`` (..., K + 1) with ``labels`` (...),
    summed over non-ignored rows."""
    return SoftmaxFocalLoss(gamma=gamma, alpha=alpha)(logits, labels)


__all__ = ["SoftmaxFocalLoss", "softmax_focal_loss"]
