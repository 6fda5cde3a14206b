"""Inference under autocast for :class:`focal_det.modeling.FocalRetinaNet`
(``MODEL.FOCAL_DET.INFERENCE_PRECISION``, :mod:`focal_det.precision`).

The backbone and the head run under the device's autocast; what they return is made float32
before anything else reads it, so score mapping, box decoding and NMS are float32 (a
half-precision box delta would move a 800 px box by up to 2 px). Folded norms are computed in
float32 (:mod:`focal_det.modeling.fold` runs outside autocast). In training the trainer's
autocast (:mod:`focal_det.engine.amp`) applies instead; in float32 nothing here runs, so the
float32 op count is unchanged.
"""
from typing import List, Optional

import torch
from torch import Tensor

from ..precision import autocast, resolve

__all__ = ["KEY", "inference_dtype", "inference_autocast", "float32_outputs", "no_autocast",
           "guard_cpu_bf16_convs"]

KEY = "MODEL.FOCAL_DET.INFERENCE_PRECISION"


def inference_dtype(precision: str, device) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` on ``device`` (None: float32)."""
    return resolve(precision, device, key=KEY)


def inference_autocast(precision: str, device):
    """The autocast the network runs under at inference (a no-op for float32)."""
    return autocast(device, inference_dtype(precision, device))


def no_autocast(device):
    """Outside autocast on ``device`` (what follows the network: float32 post-processing)."""
    return torch.autocast(torch.device(device).type, enabled=False)


def float32_outputs(outputs: List[List[Tensor]]) -> List[List[Tensor]]:
    """The head's outputs (per output kind, per level) in float32; the same lists when they
    already are."""
    return [[x if x.dtype == torch.float32 else x.float() for x in kind] for kind in outputs]


def _pad_width_one(conv: torch.nn.Conv2d, args):
    """A stride-s conv's width-1 input, padded on the right with s - 1 zero columns where that
    changes nothing (the added columns are ones the conv's own zero padding already reads, and
    the output keeps its width)."""
    x = args[0]
    if x.shape[-1] != 1 or not torch.is_grad_enabled():
        return None
    return (torch.nn.functional.pad(x, (0, conv.stride[1] - 1)),) + tuple(args[1:])


def _exact_when_padded(conv: torch.nn.Conv2d) -> bool:
    k, s, p = conv.kernel_size[1], conv.stride[1], conv.padding[1]
    if s < 2 or conv.dilation[1] != 1 or conv.padding_mode != "zeros" or isinstance(p, str):
        return False
    same_width = (1 + 2 * p - k) // s == (s + 2 * p - k) // s
    return same_width and k - 1 - p <= p


def guard_cpu_bf16_convs(model: torch.nn.Module) -> int:
    """Work around a oneDNN defect of PyTorch's CPU bf16 convolution (seen in torch 2.14): the
    weight gradient of a strided conv whose input is 1 pixel wide is garbage (values up to 1e38,
    or NaN), in either memory format. Such inputs reach RetinaNet's P7 conv (stride 2 on P6)
    when an image is at most 64 px wide. Every strided conv of ``model`` gets a forward
    pre-hook that pads such an input to ``stride`` columns of which the added ones are zeros
    the conv already reads as padding: the same output and gradients, computed correctly
    (``tests/test_amp.py``). Returns how many convs are guarded. Used by
    :mod:`focal_det.engine.amp` for CPU bf16 training only; it costs no op otherwise."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and _exact_when_padded(module):
            module.register_forward_pre_hook(_pad_width_one)
            count += 1
    return count
