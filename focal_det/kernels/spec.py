"""Which member of the sigmoid loss family a kernel computes."""
from typing import NamedTuple, Optional

from torch import Tensor


class LossSpec(NamedTuple):
    """FL (``star`` False) or FL* with its parameters.

    CE is FL with gamma 0 and alpha -1; balanced CE is FL with gamma 0. ``class_alpha`` (K,),
    when given, replaces ``alpha``: positives of class k weigh ``class_alpha[k]``, its negatives
    ``1 - class_alpha[k]`` (mmcv's per-class weight).

    ``class_gamma`` (K,), when given (FL only), replaces ``gamma``: class k's focusing
    parameter; ``class_weight`` (K,) then multiplies class k's terms (Equalized Focal Loss,
    ``focal_det.losses.efl``). Both are constants for autograd."""

    star: bool
    gamma: float
    alpha: float
    beta: float = 0.0
    class_alpha: Optional[Tensor] = None
    class_gamma: Optional[Tensor] = None
    class_weight: Optional[Tensor] = None

    @property
    def per_class(self) -> bool:
        """Whether the per-class kernels compute it (a per-class gamma)."""
        return self.class_gamma is not None

    def alpha_for(self, k: int, device, dtype) -> Optional[Tensor]:
        """``class_alpha`` on ``device`` in ``dtype``, checked against the K of the logits."""
        return _per_class(self.class_alpha, "alpha", k, device, dtype)

    def gamma_for(self, k: int, device, dtype) -> Optional[Tensor]:
        """``class_gamma`` on ``device`` in ``dtype``, checked against the K of the logits."""
        return _per_class(self.class_gamma, "gamma", k, device, dtype)

    def weight_for(self, k: int, device, dtype) -> Optional[Tensor]:
        """``class_weight`` on ``device`` in ``dtype``, checked against the K of the logits."""
        return _per_class(self.class_weight, "weight", k, device, dtype)


def _per_class(values: Optional[Tensor], name: str, k: int, device, dtype) -> Optional[Tensor]:
    if values is None:
        return None
    if values.numel() != k:
        raise ValueError(f"{name} has {values.numel()} per-class values, but the logits have "
                         f"K = {k} classes")
    return values.to(device=device, dtype=dtype).contiguous()
