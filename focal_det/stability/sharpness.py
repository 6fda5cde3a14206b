"""λmax of the Hessian of a training loss: Lanczos (:mod:`.lanczos`) on Hessian-vector products.

The product is taken by **central differences of gradients**, Hv ≈ (g(θ + εv) − g(θ − εv)) / 2ε,
because the fused loss's backward is once-differentiable (``focal_det.kernels``: the gradient
is computed in the forward pass): it runs every speed path as training does (the C++/Triton
loss, FrozenBN folding, channels-last; nothing is switched off). There is deliberately no
double-backward path: through a once-differentiable function it does not fail, it silently
drops that function's curvature (its backward's output is a constant to autograd).

- The step: ε = ``eps_rel`` · max(‖θ‖, 1) along a unit vector v (θ the parameters probed).
  Central differences are exact for quadratics and O(ε²) otherwise. Smooth L1's Hessian jumps at
  |x| = β (the gradient is continuous): a difference whose ±εv straddles the kink averages the
  two sides, an error that shrinks with the share of box deltas within ε of the kink, i.e.
  linearly in ε, not quadratically. ``tests/test_stability.py`` measures both regimes against
  the exact Hessian of a tiny model; the default 1e-3 is within 1% there.
- A preconditioner ``scales`` (one factor per parameter tensor) gives λmax of D^½ H D^½: with
  D the optimizer's per-group LR over the base LR, SGD with base LR η and momentum β is stable
  along every direction iff η · λmax(D^½ H D^½) < 2(1 + β) (Cohen et al., ICLR 2021; weight
  decay adds its coefficient to every eigenvalue, not counted here).
- Deterministic for a seed on a deterministic backend (the CPU; CUDA when its convolutions are
  deterministic), and the parameters are restored bit for bit.
"""
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .lanczos import Spectrum, top_eigenvalue


class ParamSpace:
    """The parameters a Hessian is taken over, flattened, with a per-tensor scale (D^½)."""

    def __init__(self, params: Sequence[Tensor], scales: Optional[Sequence[float]] = None):
        self.params = list(params)
        if not self.params:
            raise ValueError("no parameters to probe (is the group empty or frozen?)")
        self.scales = [1.0] * len(self.params) if scales is None else [float(s) for s in scales]
        if len(self.scales) != len(self.params):
            raise ValueError(f"{len(self.scales)} scales for {len(self.params)} parameters")
        self.dim = sum(p.numel() for p in self.params)
        self._saved = [p.detach().clone() for p in self.params]

    def flat(self, tensors) -> Tensor:
        return torch.cat([(torch.zeros(p.numel(), dtype=torch.float32) if t is None
                           else t.detach().reshape(-1).float().cpu()) * s
                          for t, p, s in zip(tensors, self.params, self.scales)])

    def norm(self) -> float:
        return float(torch.sqrt(sum(p.detach().double().pow(2).sum() for p in self.params)))

    @torch.no_grad()
    def move(self, v: Optional[Tensor], step: float) -> None:
        """θ = θ0 + step · D^½ v (v None: θ = θ0, bit for bit)."""
        start = 0
        for p, p0, s in zip(self.params, self._saved, self.scales):
            p.copy_(p0)
            if v is not None:
                d = v[start:start + p.numel()].view(p.shape).to(p.device, p.dtype)
                p.add_(d, alpha=step * s)
            start += p.numel()


def _grad(space: ParamSpace, loss_fn: Callable[[], Tensor]):
    loss = loss_fn()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss is not finite ({float(loss)}) at the probed point")
    return torch.autograd.grad(loss, space.params, allow_unused=True)


def hvp_central(space: ParamSpace, loss_fn, v: Tensor, eps: float) -> Tensor:
    space.move(v, eps)
    g_plus = space.flat(_grad(space, loss_fn))
    space.move(v, -eps)
    g_minus = space.flat(_grad(space, loss_fn))
    space.move(None, 0.0)
    return (g_plus - g_minus) / (2 * eps)


def lambda_max(loss_fn: Callable[[], Tensor], params: Sequence[Tensor], *,
               scales: Optional[Sequence[float]] = None, iters: int = 10, seed: int = 0,
               eps_rel: float = 1e-3, tol: float = 0.0) -> Spectrum:
    """The top eigenvalue of the Hessian of ``loss_fn()`` (a scalar; fixed batches inside) with
    respect to ``params`` (preconditioned by ``scales``), by ``iters`` Lanczos iterations on
    central-difference Hessian-vector products (2 gradients each)."""
    if not eps_rel > 0:
        raise ValueError(f"eps_rel={eps_rel!r} must be > 0")
    space = ParamSpace(params, scales)
    eps = eps_rel * max(space.norm(), 1.0)

    def matvec(v: Tensor) -> Tensor:
        return hvp_central(space, loss_fn, v, eps)

    try:
        return top_eigenvalue(matvec, space.dim, iters=iters, seed=seed, tol=tol)
    finally:
        space.move(None, 0.0)


def lr_bound(lam: float, momentum: float) -> float:
    """The largest base LR at which SGD with ``momentum`` is stable along curvature ``lam``:
    2(1 + β)/λ (inf for λ <= 0)."""
    return 2.0 * (1.0 + momentum) / lam if lam > 0 else float("inf")


def cosine(a: Tensor, b: Tensor) -> float:
    den = float(a.norm() * b.norm())
    return float(torch.dot(a, b)) / den if den > 0 else float("nan")


__all__ = ["ParamSpace", "lambda_max", "lr_bound", "cosine", "hvp_central", "Spectrum"]
