"""Which member of the sigmoid loss family a kernel computes."""
from typing import NamedTuple, Optional

from torch import Tensor


class LossSpec(NamedTuple):
    """FL (``star`` False) or FL* with its parameters.

    CE is FL with gamma 0 and alpha -1; balanced CE is FL with gamma 0. ``class_alpha`` (K,),
    when given, replaces ``alpha``: positives of class k weigh ``class_alpha[k]``, its negatives
    ``1 - class_alpha[k]`` (mmcv's per-class weight)."""

    star: bool
    gamma: float
    alpha: float
    beta: float = 0.0
    class_alpha: Optional[Tensor] = None

    def alpha_for(self, k: int, device, dtype) -> Optional[Tensor]:
        """``class_alpha`` on ``device`` in ``dtype``, checked against the K of the logits."""
        if self.class_alpha is None:
            return None
        if self.class_alpha.numel() != k:
            raise ValueError(f"alpha has {self.class_alpha.numel()} per-class values, but the "
                             f"logits have K = {k} classes")
        return self.class_alpha.to(device=device, dtype=dtype).contiguous()
