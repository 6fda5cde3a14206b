"""Fold normalization layers into the convolution before them, without touching parameters.

Detectron2's ``Conv2d`` runs ``conv -> norm`` as two ops. When the norm is an affine map with
fixed statistics it can be folded into the convolution: ``w' = w * s``, ``b' = (b - mean) * s +
beta`` with ``s = gamma / sqrt(var + eps)``, one op and one memory pass less per layer.

- ``FrozenBatchNorm2d`` is folded in training and at inference. When the conv weight is
  trainable the folded weight is computed with autograd each forward (a few KB of arithmetic), so
  gradients reach the original parameters exactly as before.
- ``BatchNorm2d`` (and Detectron2's ``NaiveSyncBatchNorm``) is folded only in eval mode and only
  when no gradient is recorded: in training it normalizes with batch statistics.

The parameters, buffers, ``state_dict`` and module names are unchanged: folding swaps the
module's class for a subclass with another ``forward``, and keeps the folded tensors in a plain
attribute that is recomputed whenever any of the tensors it was made from changes (tracked with
their version counters and storage, so ``load_state_dict``, ``.to()`` and optimizer steps are all
seen). :func:`unfold_norms` restores the original classes.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import Tensor, nn


def _fold(conv: Conv2d) -> Tuple[Tensor, Tensor]:
    norm = conv.norm
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.to(conv.weight.dtype).reshape(-1, 1, 1, 1)
    return weight, bias.to(conv.weight.dtype)


def _key(conv: Conv2d):
    tensors = [conv.weight, conv.bias, conv.norm.weight, conv.norm.bias,
               conv.norm.running_mean, conv.norm.running_var]
    return tuple((t._version, t.data_ptr(), t.device, t.dtype) if t is not None else None
                 for t in tensors)


class FoldedNormConv2d(Conv2d):
    """A Detectron2 ``Conv2d`` whose ``norm`` is folded into it where that is exact."""

    _fold_cache: Optional[tuple] = None

    def _can_fold(self) -> bool:
        norm = self.norm
        if isinstance(norm, FrozenBatchNorm2d):
            return True
        return (isinstance(norm, nn.BatchNorm2d) and not norm.training
                and norm.track_running_stats and norm.running_mean is not None
                and not torch.is_grad_enabled())

    def _folded(self) -> Tuple[Tensor, Tensor]:
        needs_grad = torch.is_grad_enabled() and any(
            p is not None and p.requires_grad for p in (self.weight, self.bias))
        if needs_grad or torch.jit.is_tracing():
            return _fold(self)  # differentiable (and traced as ops, not baked constants)
        key = _key(self)
        if self._fold_cache is None or self._fold_cache[0] != key:
            with torch.no_grad():
                self._fold_cache = (key, *_fold(self))
        return self._fold_cache[1], self._fold_cache[2]

    def forward(self, x):
        if not self._can_fold():
            return super().forward(x)
        weight, bias = self._folded()
        if x.dtype != weight.dtype and not torch.is_autocast_enabled():
            weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_norms(model: nn.Module) -> int:
    """Make every Detectron2 ``Conv2d`` in ``model`` whose ``norm`` is a FrozenBatchNorm2d or a
    BatchNorm2d a :class:`FoldedNormConv2d` (in place). Returns how many were switched."""
    count = 0
    for module in model.modules():
        if type(module) is Conv2d and isinstance(module.norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            if module.padding_mode != "zeros":
                continue  # F.conv2d above does zero padding only
            module.__class__ = FoldedNormConv2d
            count += 1
    return count


def unfold_norms(model: nn.Module) -> int:
    """Undo :func:`fold_norms`: the modules become plain Detectron2 ``Conv2d`` again."""
    count = 0
    for module in model.modules():
        if type(module) is FoldedNormConv2d:
            module.__class__ = Conv2d
            module.__dict__.pop("_fold_cache", None)
            count += 1
    return count
