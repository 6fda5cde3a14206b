"""Which backend computes the loss: ``auto`` (the default), ``native``, ``triton`` or
``reference`` (see ``focal_det.kernels``).

The choice is read, in order, from :func:`use_backend` (a context variable: scoped to a ``with``
block and to the thread or task that entered it), then ``FOCAL_DET_LOSS_BACKEND``, then ``auto``.
Whether the auto-selected Triton kernel failed to compile is remembered in :data:`TRITON_STATE`,
so the warning is given once and later calls go straight to the fallback.
"""
import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Optional

import torch

from . import triton_loss

BACKENDS = ("auto", "native", "triton", "reference")

_forced: contextvars.ContextVar = contextvars.ContextVar("focal_det_loss_backend", default=None)


@dataclass
class TritonState:
    """Why the auto-selected Triton kernel could not run (None: it has not failed)."""

    failure: Optional[str] = None


TRITON_STATE = TritonState()


def native_available() -> bool:
    """True when the compiled CPU operator ``focal_det._C`` is importable."""
    try:
        from focal_det import _C  # noqa: F401  (registers torch.ops.focal_det)
    except ImportError:
        return False
    return hasattr(torch.ops.focal_det, "sigmoid_loss")


def check_name(name: str, where: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"{where}={name!r} is not one of {list(BACKENDS)}")


@contextlib.contextmanager
def use_backend(name: str):
    """Force a backend inside a ``with`` block (tests, benchmarks)."""
    check_name(name, "use_backend")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def requested() -> str:
    """The backend asked for: by :func:`use_backend`, else the environment, else ``auto``."""
    return _forced.get() or os.environ.get("FOCAL_DET_LOSS_BACKEND", "auto")


def select_backend(device: torch.device) -> str:
    """The backend that computes the loss for tensors on ``device``."""
    name = requested()
    check_name(name, "FOCAL_DET_LOSS_BACKEND")
    if name == "native" and not native_available():
        raise RuntimeError(
            "FOCAL_DET_LOSS_BACKEND=native, but focal_det._C is not built: reinstall focal_det "
            "with a C++ compiler (pip install --no-build-isolation -e .)")
    if name == "triton" and not triton_loss.available():
        raise RuntimeError("FOCAL_DET_LOSS_BACKEND=triton, but triton is not installed")
    if name == "native" and device.type != "cpu":
        raise RuntimeError(f"the native backend runs on CPU tensors, not {device.type}")
    if name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the triton backend runs CPU tensors only under TRITON_INTERPRET=1")
    if name != "auto":
        return name
    if device.type == "cuda" and triton_loss.available() and TRITON_STATE.failure is None:
        return "triton"
    if device.type == "cpu" and native_available():
        return "native"
    return "reference"
