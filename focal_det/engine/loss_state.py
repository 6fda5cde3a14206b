"""Losses with state learn after each optimizer step that is taken.

A classification loss that is a ``torch.nn.Module`` inside the model (Equalized Focal Loss,
whose gradient statistics are buffers) is told of every optimizer step by
:meth:`focal_det.losses.ClassificationLoss.after_step`, registered here as the optimizer's step
post-hook. The hook runs inside ``optimizer.step()``, so it follows the step exactly: a step
that Detectron2 does not take (a non-finite loss stops training first) or that the gradient
scaler skips (inf/NaN gradients under float16) never calls it, and it runs before the
after-step hooks that write checkpoints. Losses without state (FL and the paper's family) are
no modules: nothing is registered for them, and their training step is unchanged.
"""
from typing import List

import torch

from ..losses.base import ClassificationLoss

__all__ = ["install"]


def install(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> List[ClassificationLoss]:
    """Register each stateful loss of ``model`` (DDP-wrapped or not) as a step post-hook of
    ``optimizer``; returns those losses. Call it once per optimizer (focal_det's ``Trainer``
    does; with your own training loop, call it yourself)."""
    losses = [m for m in model.modules() if isinstance(m, ClassificationLoss)]
    for loss in losses:
        optimizer.register_step_post_hook(_StepHook(loss))
    return losses


class _StepHook:
    """``loss.after_step()`` as an optimizer step post-hook ``hook(optimizer, args, kwargs)``."""

    def __init__(self, loss: ClassificationLoss):
        self.loss = loss

    def __call__(self, optimizer, args, kwargs) -> None:
        self.loss.after_step()
