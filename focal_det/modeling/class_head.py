"""The class conv for K logits per anchor (the sigmoid losses) or K + 1 (softmax FL, background
last), and the identity score map used when scores are computed before decoding."""
import torch
from torch import Tensor


def identity(x: Tensor) -> Tensor:
    return x


def wider_class_conv(conv: torch.nn.Conv2d, num_classes: int, num_logits: int):
    """RetinaNetHead's class conv with ``num_logits`` outputs per anchor instead of
    ``num_classes``, initialized as RetinaNetHead initializes it (weights N(0, 0.01))."""
    anchors = conv.out_channels // num_classes
    wider = torch.nn.Conv2d(conv.in_channels, anchors * num_logits, kernel_size=3, stride=1,
                            padding=1).to(conv.weight.device)
    torch.nn.init.normal_(wider.weight, mean=0, std=0.01)
    return wider
