"""Equalized Focal Loss (Li et al., "Equalized Focal Loss for Dense Long-Tailed Object
Detection", CVPR 2022, https://arxiv.org/abs/2201.02593) for long-tailed data.

Shapes: K classes, anchors' logits (..., K), labels (...) (class in [0, K), K = background,
-1 = ignored). Per anchor i and class j, with p_t, alpha_t as in FL::

    EFL_ij = -alpha_t * (gamma_j / gamma_b) * (1 - p_t)^gamma_j * log(p_t)
    gamma_j = gamma_b + s * (1 - g_j),   g_j = clamp(pos_grad_j / (neg_grad_j + 1e-10), 0, 1)

``pos_grad_j`` / ``neg_grad_j``: the magnitude of the gradient of the trained loss with respect
to class j's logits, summed over the anchors where j is the target / is not. A class whose
positives push back as hard as its negatives push down (g_j = 1) is trained with plain FL; a
rare class (g_j ~ 0) gets a larger focusing factor (easy negatives count less) and a larger
weight.

The official code's semantics (ModelTC/United-Perception, ``up/tasks/det/plugins/efl/``), kept:

- **which gradient**: |dL/dz|, z the class conv's outputs (every FPN level's logits), L the
  loss that is trained: including the loss normalizer, alpha_t and the weighting factor;
- **which anchors**: ignored anchors (label -1) count for neither sum; an anchor labelled j is
  a positive of j and a negative of every other class; background anchors are negatives of all;
- **accumulation**: summed from iteration 0, with no decay, momentum or reset;
- **the start**: g = 1 (``pos_neg`` starts at 1), so the first iteration is plain FL(gamma_b,
  alpha); ``pos_grad`` and ``neg_grad`` start at 0;
- gamma_j and gamma_j / gamma_b are constants for autograd; the defaults are the official
  ones (gamma_b 2, s 8, alpha 0.25; the official small models use s 4).

How the statistics are gathered, and where that departs:

- **No backward hook.** The fused kernels compute each logit's gradient in the forward pass
  anyway; with a per-class gamma they also return, per class, the sums of its magnitude over
  positives and negatives (``focal_det.kernels.fused_loss(..., stats_out=)``, every backend).
  Those are the sums of |d(sum of the loss)/dz|. The model then tells the loss its normalizer
  (:meth:`observe_normalizer`), which makes them |dL/dz| of the trained L; the tests check them
  against autograd's logit gradients. The gradient of bfloat16/float16 logits is summed before
  its rounding to their dtype.
- **The AMP loss scale** (departure): the official hook sees the scaled gradient under float16
  with a gradient scaler; ours never contains it, because it never passes through backward.
- **Skipped steps** (departure): statistics are added after each optimizer step that is taken
  (:meth:`after_step`, an optimizer step hook that focal_det's trainer installs); a step the
  gradient scaler skips (inf/NaN gradients) adds nothing, and neither does one whose own sums
  are not finite. The official code adds them right after backward; the next forward sees the
  same buffers either way.
- **Workers** (departure): the official code sums each worker's gradient of its own loss over
  workers. DDP averages the workers' gradients, so the gradient the optimizer follows is that
  sum over the number of workers; we accumulate that (one all_reduce of a (2, K) tensor per
  step, no host sync). g is a ratio, so it is unchanged; and N processes hold the same buffers
  as one process on the combined batch.

State: buffers ``pos_grad``, ``neg_grad``, ``pos_neg`` (= g), (K,) float32, sized when the model
binds the loss to K (:meth:`check_num_classes`); they are in the model's ``state_dict``, so in
checkpoints, and a resumed run continues them exactly. gamma_j and the weights are derived
buffers, recomputed from ``pos_neg`` after each step and each load.
"""
import logging
from typing import Optional

import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.utils import comm
from torch import Tensor, nn

from ..kernels import LossSpec, fused_loss
from .registry import (CLS_LOSS_REGISTRY, SigmoidClassificationLoss, _AlphaMixin, check_labels,
                       config_alpha)

logger = logging.getLogger(__name__)

_KEY = "MODEL.FOCAL_DET.CLS_LOSS"
EPS = 1e-10  # the official g = pos / (neg + 1e-10)
# Training forwards without a committed step before the warning that nothing commits them
# (a gradient scaler skips a few steps in a row at most; a trainer without the hook, all).
WARN_UNCOMMITTED = 50


def _refresh_after_load(module: "EqualizedFocalLoss", incompatible_keys) -> None:
    module._refresh()


@CLS_LOSS_REGISTRY.register()
class EqualizedFocalLoss(_AlphaMixin, SigmoidClassificationLoss, nn.Module):
    """EFL (see the module docstring): FL with gamma_j = gamma_b + s (1 - g_j) and weight
    gamma_j / gamma_b per class, g_j from the gradient statistics this loss keeps as buffers.

    Config: ``MODEL.FOCAL_DET.CLS_LOSS.NAME: EqualizedFocalLoss`` with ``GAMMA`` (gamma_b),
    ``EFL_SCALE`` (s) and ``ALPHA`` (or ``ALPHA_PER_CLASS``). LazyConfig:
    ``cls_loss=L(EqualizedFocalLoss)(gamma_b=2.0, scale=8.0, alpha=0.25)``. With s = 0, or
    before the first step, it is FL(gamma_b, alpha).

    It is a ``torch.nn.Module`` only to hold its buffers (the model's ``cls_loss`` submodule:
    moved, saved and loaded with the model); calling it is the loss contract's ``__call__``.
    """

    @configurable
    def __init__(self, *, gamma_b: float = 2.0, scale: float = 8.0, alpha=0.25,
                 num_classes: Optional[int] = None):
        """
        Args:
            gamma_b: the base focusing parameter (> 0), FL's gamma.
            scale: s (>= 0): how far gamma_j grows for a class without positive gradient.
            alpha: the weight of positives, as FL's (one value, or K values).
            num_classes: K, to size the statistics now; None: when the model (or the first
                call) binds the loss to K (:meth:`check_num_classes`).
        """
        nn.Module.__init__(self)
        if not gamma_b > 0 or gamma_b == float("inf"):
            raise ValueError(f"{_KEY}.GAMMA={gamma_b!r} (EqualizedFocalLoss's gamma_b) must be "
                             "a finite value > 0")
        if not scale >= 0 or scale == float("inf"):
            raise ValueError(f"{_KEY}.EFL_SCALE={scale!r} (EqualizedFocalLoss's scale s) must be "
                             "a finite value >= 0")
        self.gamma_b, self.scale = float(gamma_b), float(scale)
        self.gamma = self.gamma_b  # FL's name for it (the alpha checks read it)
        self._set_alpha(alpha)
        self.num_classes: Optional[int] = None
        self._recorded = False  # this forward added sums to _forward_sums
        self._uncommitted = 0  # training forwards since the last committed step
        self._ready = False  # _pending holds a forward's sums not yet added (one add per step)
        self._warned_unobserved = False
        self.register_load_state_dict_post_hook(_refresh_after_load)
        if num_classes is not None:
            self.check_num_classes(num_classes)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FOCAL_DET.CLS_LOSS
        return {"gamma_b": c.GAMMA, "scale": c.EFL_SCALE, "alpha": config_alpha(cfg)}

    def check_num_classes(self, num_classes: int) -> None:
        """Sizes the statistics for K classes the first time; another K afterwards is an
        error naming both (as is a per-class alpha of another length)."""
        super().check_num_classes(num_classes)
        if self.num_classes is None:
            self._bind(int(num_classes), None)
        elif self.num_classes != num_classes:
            raise ValueError(f"EqualizedFocalLoss keeps gradient statistics for K = "
                             f"{self.num_classes} classes, but the model has K = {num_classes} "
                             "(MODEL.RETINANET.NUM_CLASSES): build one loss per model")

    def _bind(self, k: int, device) -> None:
        self.num_classes = k
        self.register_buffer("pos_grad", torch.zeros(k, device=device))
        self.register_buffer("neg_grad", torch.zeros(k, device=device))
        self.register_buffer("pos_neg", torch.ones(k, device=device))
        for name in ("class_gamma", "class_weight"):  # derived from pos_neg: not saved
            self.register_buffer(name, torch.empty(k, device=device), persistent=False)
        # this forward's sums of |d(sum of loss)/dz| (positives, negatives) and the step's
        # sums of |dL/dz|, waiting for the optimizer step
        self.register_buffer("_forward_sums", torch.zeros(2, k, device=device), persistent=False)
        self.register_buffer("_pending", torch.zeros(2, k, device=device), persistent=False)
        self._refresh()

    @torch.no_grad()
    def _refresh(self) -> None:
        """gamma_j = gamma_b + s (1 - g_j) and the weights gamma_j / gamma_b from ``pos_neg``."""
        if self.num_classes is None:
            return
        self.class_gamma.copy_(torch.add(self.pos_neg, -1.0).mul_(-self.scale).add_(
            self.gamma_b))
        torch.div(self.class_gamma, self.gamma_b, out=self.class_weight)

    def spec(self) -> LossSpec:
        """The per-class FL the kernels compute; FL(gamma_b, alpha) before the loss is bound
        to K (then every g_j is 1)."""
        if self.num_classes is None:
            return LossSpec(False, self.gamma_b, self.alpha, class_alpha=self.class_alpha)
        return LossSpec(False, self.gamma_b, self.alpha, class_alpha=self.class_alpha,
                        class_gamma=self.class_gamma, class_weight=self.class_weight)

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss summed over non-ignored rows. With gradient (training), the same pass adds
        the per-class gradient sums to this forward's statistics."""
        check_labels(logits, labels)
        if self.num_classes is None:
            self._bind(logits.shape[-1], logits.device)
        record = torch.is_grad_enabled() and logits.requires_grad
        self._recorded |= record
        return fused_loss(logits, self.spec(), "sum", labels=labels,
                          stats_out=self._forward_sums if record else None)

    @torch.no_grad()
    def observe_normalizer(self, normalizer, workers: int = 1) -> None:
        """This forward's sums become the step's |dL/dz| sums: L is their loss divided by
        ``normalizer``, averaged over ``workers`` (DDP). One forward per step: a later forward
        replaces them (so a step the gradient scaler skipped leaves nothing behind)."""
        if not self._recorded:
            return  # e.g. a forward without gradient (PreciseBN): nothing to replace
        self._recorded = False
        torch.div(self._forward_sums, normalizer * workers, out=self._pending)
        self._forward_sums.zero_()
        self._ready = True
        self._uncommitted += 1
        if self._uncommitted == WARN_UNCOMMITTED:
            logger.warning(
                f"EqualizedFocalLoss: {WARN_UNCOMMITTED} training forwards and no optimizer "
                "step has added their gradient statistics, so EFL stays plain FL. focal_det's "
                "Trainer installs the step hook; with another trainer, call "
                "focal_det.engine.loss_state.install(optimizer, model) once.")

    @torch.no_grad()
    def after_step(self) -> None:
        """Adds the step's sums (all-reduced over workers) to the buffers and updates g; sums
        that are not finite add nothing. Fixed-size work, no host sync."""
        if self._recorded and not self._warned_unobserved:
            self._warned_unobserved = True
            logger.warning("EqualizedFocalLoss: an optimizer step came after a training forward "
                           "whose normalizer was never reported (observe_normalizer), so its "
                           "gradient statistics are not added and EFL stays plain FL; a model "
                           "other than FocalRetinaNet must call cls_loss.observe_normalizer("
                           "normalizer, workers) after computing its loss")
        # Once per step: an optimizer whose step() calls its parent's (Detectron2's clipping
        # subclass of SGD) runs the step post-hooks twice.
        if self.num_classes is None or not self._ready:
            return
        self._ready = False
        self._uncommitted = 0
        pending = self._pending
        if comm.get_world_size() > 1:
            dist.all_reduce(pending)
        pending = torch.where(torch.isfinite(pending).all(), pending, 0.0)
        self.pos_grad.add_(pending[0])
        self.neg_grad.add_(pending[1])
        torch.div(self.pos_grad, self.neg_grad + EPS, out=self.pos_neg).clamp_(0.0, 1.0)
        self._refresh()
        self._pending.zero_()

    def __repr__(self):
        return (f"EqualizedFocalLoss(gamma_b={self.gamma_b}, scale={self.scale}, "
                f"alpha={self._alpha_repr()}, num_classes={self.num_classes})")
