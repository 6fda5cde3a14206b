"""Optimizers for LazyConfig ``.py`` configs: what a ``.yaml`` config gets from
``SOLVER.CLIP_GRADIENTS``, as a plain optimizer class (a LazyConfig's training loop has no
clipping step, and the config must keep ``optimizer.params`` where the loop sets the model)."""
import torch


class ClippedSGD(torch.optim.SGD):
    """SGD that clips gradients before each step exactly as Detectron2's
    ``SOLVER.CLIP_GRADIENTS`` does: ``clip_type`` "value" (each element to
    ``[-clip_value, clip_value]``) or "norm" (each parameter tensor separately to norm
    ``clip_value``, of order ``norm_type``)."""

    def __init__(self, params, *, clip_type: str = "norm", clip_value: float = 10.0,
                 norm_type: float = 2.0, **kwargs):
        if clip_type not in ("norm", "value"):
            raise ValueError(f"clip_type={clip_type!r} is not one of ['norm', 'value']")
        if not clip_value > 0:
            raise ValueError(f"clip_value={clip_value!r} must be > 0")
        super().__init__(params, **kwargs)
        self.clip_type, self.clip_value, self.norm_type = clip_type, clip_value, norm_type

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self.clip_type == "norm":
                    torch.nn.utils.clip_grad_norm_(p, self.clip_value, self.norm_type)
                else:
                    torch.nn.utils.clip_grad_value_(p, self.clip_value)
        return super().step(closure)
