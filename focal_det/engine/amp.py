"""Mixed-precision training on any device: Detectron2's ``AMPTrainer`` with one seam changed.

Detectron2 (v0.6 and main) builds ``AMPTrainer`` for ``SOLVER.AMP.ENABLED`` and its
``run_step`` asserts CUDA and enters ``torch.cuda.amp.autocast``. :func:`enable` turns the
trainer Detectron2 built into a :class:`FocalAMPTrainer`, whose ``run_step``:

- on CUDA at a precision Detectron2's own step runs (float16 always; bfloat16 where its
  ``AMPTrainer`` takes ``precision``, i.e. after v0.6) *is* Detectron2's step;
- otherwise (the CPU; bfloat16 on v0.6's CUDA) is the same step with the device's autocast.

The loop, the hooks and ``state_dict`` (with the gradient scaler's state, so resume is exact)
stay Detectron2's. float16 gets a gradient scaler; bfloat16 has float32's exponent range and
gets a disabled one (its state is empty; nothing is scaled or skipped).
"""
import inspect
import time
import warnings

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage

from ..modeling.mixed import guard_cpu_bf16_convs
from ..precision import autocast, device_type, resolve

__all__ = ["FocalAMPTrainer", "enable", "train_precision"]

# Detectron2's AMPTrainer takes the autocast dtype after v0.6 (a feature, not a version).
D2_HAS_PRECISION = "precision" in inspect.signature(AMPTrainer.__init__).parameters


def train_precision(cfg):
    """The training autocast dtype of a ``.yaml`` cfg (None: float32 or AMP off); raises
    :class:`focal_det.precision.PrecisionError` for one the device cannot run."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    return resolve(cfg.SOLVER.AMP.PRECISION, cfg.MODEL.DEVICE, key="SOLVER.AMP.PRECISION")


def _scaler(kind: str, dtype: torch.dtype):
    enabled = dtype == torch.float16
    try:
        return torch.amp.GradScaler(kind, enabled=enabled)
    except (AttributeError, TypeError):  # torch < 2.3: CUDA's only
        return torch.cuda.amp.GradScaler(enabled=enabled and kind == "cuda")


class FocalAMPTrainer(AMPTrainer):
    """``AMPTrainer`` whose step autocasts on its device at its precision (module docstring)."""

    device: str = "cuda"
    precision: torch.dtype = torch.float16

    def run_step(self):
        if device_type(self.device) == "cuda" and (
                D2_HAS_PRECISION or self.precision == torch.float16):
            return super().run_step()
        assert self.model.training, "[FocalAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        before = getattr(self, "zero_grad_before_forward", False)  # after v0.6
        if before:
            self.optimizer.zero_grad()
        with autocast(self.device, self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not before:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        if getattr(self, "log_grad_scaler", False):
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        if hasattr(SimpleTrainer, "after_backward"):
            self.after_backward()
        if getattr(self, "async_write_metrics", False):
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time,
                                            iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict):
        if "grad_scaler" not in state_dict:  # a checkpoint of a float32 run: a fresh scaler
            state_dict = {**state_dict, "grad_scaler": self.grad_scaler.state_dict()}
        super().load_state_dict(state_dict)


def enable(trainer: SimpleTrainer, device, dtype: torch.dtype) -> FocalAMPTrainer:
    """Make the ``SimpleTrainer``/``AMPTrainer`` Detectron2 built (its model, data stream and
    optimizer unchanged) a :class:`FocalAMPTrainer` on ``device`` at ``dtype``, in place."""
    trainer.__class__ = FocalAMPTrainer
    if device_type(device) == "cpu" and dtype == torch.bfloat16:
        guard_cpu_bf16_convs(trainer.model)  # a oneDNN defect (focal_det.modeling.mixed)
    trainer.device = str(device)
    trainer.precision = dtype
    with warnings.catch_warnings():  # no "GradScaler is enabled, but CUDA is not available"
        warnings.simplefilter("ignore")
        trainer.grad_scaler = _scaler(device_type(device), dtype)
    return trainer
