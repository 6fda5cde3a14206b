"""Mixed precision: which autocast dtype a device runs, checked before any work.

Names are torch's dtype names. ``"auto"`` is what Detectron2 does on a GPU (``float16`` with a
gradient scaler, ``AMPTrainer``'s default) and ``bfloat16`` on the CPU, where autocast has no
float16 kernels worth using and bf16 needs no scaler (float32's exponent range).

- training: ``SOLVER.AMP.ENABLED`` + ``SOLVER.AMP.PRECISION`` (``.yaml``), ``train.amp.enabled``
  + ``train.amp.precision`` (``.py``), run by :mod:`focal_det.engine.amp`;
- inference: ``MODEL.FOCAL_DET.INFERENCE_PRECISION`` (``model.inference_precision``): the
  backbone and head run under autocast, scores, box decoding and NMS in float32
  (:class:`focal_det.modeling.FocalRetinaNet`); evaluation, ``Predictor``, ``demo.py`` and the
  tools all build the model from the config, so all of them take it.

A precision the device cannot run is a :class:`PrecisionError` naming the key; bf16 on a CPU
without bf16 instructions runs (emulated, slowly) with a one-line warning.
"""
import contextlib
import functools
import logging
from typing import Optional

import torch

from .errors import FocalDetError

__all__ = ["PRECISIONS", "PrecisionError", "resolve", "autocast", "cpu_has_bf16", "device_type"]

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
logger = logging.getLogger("focal_det")


class PrecisionError(FocalDetError, ValueError):
    """A precision that does not exist, or that the device cannot run."""


def device_type(device) -> str:
    """``"cuda"``, ``"cpu"``, ... of a device string or ``torch.device``."""
    return torch.device(device).type


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> Optional[bool]:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX-BF16); None where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.lru_cache(maxsize=None)
def _warn_slow_bf16() -> None:
    logger.warning("bfloat16 autocast on a CPU without bf16 instructions (no avx512_bf16 or "
                   "amx_bf16 in /proc/cpuinfo): it runs, emulated, and will be slower than "
                   "float32")


def resolve(precision: str, device, *, key: str) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` on ``device`` (None: float32, no autocast).
    ``key`` names the setting in errors."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"{key}={precision!r} is not one of {list(PRECISIONS)}")
    kind = device_type(device)
    if precision == "auto":
        precision = "float16" if kind == "cuda" else "bfloat16"
    dtype = _DTYPES[precision]
    if dtype is None:
        return None
    if kind == "cuda":
        if dtype == torch.bfloat16 and torch.cuda.is_available() \
                and not torch.cuda.is_bf16_supported():
            raise PrecisionError(f"{key}=bfloat16: this GPU has no bfloat16 support; use "
                                 "float16")
    elif kind == "cpu":
        if dtype == torch.float16:
            raise PrecisionError(f"{key}=float16 needs a CUDA device; on the CPU use bfloat16 "
                                 "(or auto)")
        if cpu_has_bf16() is False:
            _warn_slow_bf16()
    else:
        raise PrecisionError(f"{key}={precision}: mixed precision on {kind!r} devices is not "
                             "supported (cpu and cuda are)")
    return dtype


def autocast(device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` on ``device``'s type with ``dtype``; a no-op for None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=dtype)
