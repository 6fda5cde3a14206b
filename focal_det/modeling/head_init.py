"""The head convs' initial weights: Detectron's and Detectron2's N(0, 0.01) whatever the width
("fixed", the default), or scaled so that each conv has the gain it has at 256 input channels
("width_preserving", ``MODEL.FOCAL_DET.HEAD.WEIGHT_INIT``).

N(0, 0.01) was chosen for the paper's 256 channels: a 3x3 conv with C inputs scales the RMS of
its input by about 0.01 * sqrt(9 C), 0.48 at 256 and 0.24 at 64, once per conv of the head.
"width_preserving" multiplies each head conv's weights (the subnets' convs, the class conv and
the box conv) by sqrt(REFERENCE_CHANNELS / C) for its own C inputs: std 0.01 * sqrt(256 / C),
the same as N(0, 0.01) at 256. Biases are not touched (the class conv keeps its prior). The
weights are scaled in place, not drawn again, so a run with either choice draws the same random
numbers (same seed: same directions, only the scale differs). At 256 channels both are the same.
A departure from the paper at any other width, stated as one.
"""
import math

import torch

HEAD_WEIGHT_INITS = ("fixed", "width_preserving")
REFERENCE_CHANNELS = 256


def head_convs(head: torch.nn.Module):
    """The convs Detectron2's ``RetinaNetHead`` initializes with N(0, 0.01)."""
    return [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]


@torch.no_grad()
def apply_head_weight_init(head: torch.nn.Module, weight_init: str) -> None:
    """Rescale ``head``'s conv weights for ``weight_init`` (see the module docstring); "fixed"
    leaves them as built."""
    if weight_init not in HEAD_WEIGHT_INITS:
        raise ValueError(f"MODEL.FOCAL_DET.HEAD.WEIGHT_INIT={weight_init!r} is not one of the "
                         f"allowed values {list(HEAD_WEIGHT_INITS)}")
    if weight_init == "fixed":
        return
    for conv in head_convs(head):
        fan_in = conv.in_channels // conv.groups
        conv.weight.mul_(math.sqrt(REFERENCE_CHANNELS / fan_in))
