"""The top eigenvalue of a symmetric operator given only as a matrix-vector product: Lanczos with
full reorthogonalization (Golub & Van Loan, Matrix Computations, 4th ed., 10.1).

Why Lanczos and not power iteration: power iteration converges to the eigenvalue of largest
*magnitude*, which early in training can be a negative one (a saddle's direction) hiding the
largest positive curvature, the one that bounds the step size. Lanczos gives both ends of the
spectrum from one Krylov space; :func:`top_eigenvalue` returns the largest *algebraic* Ritz value
and the most negative one beside it. Full reorthogonalization keeps the Ritz values free of the
spurious copies plain Lanczos makes in floating point; it costs ``iters`` stored vectors
(float32, one per iteration).

The convergence estimate is the standard residual bound: for a Ritz pair (θ, y) of the k x k
tridiagonal T, ||A x − θ x|| = |β_k · y_k| (x the Ritz vector), and some eigenvalue of A lies
within that of θ; for the top one the estimate converges to λmax from below.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import Tensor


@dataclass
class Spectrum:
    """What a Lanczos run found: ``top`` (largest algebraic Ritz value, the λmax estimate),
    ``bottom`` (smallest), ``residual`` (|β_k y_k| of the top pair: an eigenvalue of the operator
    lies within it), ``history`` (the top Ritz value after each iteration) and ``matvecs``."""

    top: float
    bottom: float
    residual: float
    history: List[float]
    matvecs: int

    def as_dict(self) -> dict:
        return {"lambda_max": self.top, "lambda_min": self.bottom, "residual": self.residual,
                "history": self.history, "matvecs": self.matvecs}


def top_eigenvalue(matvec: Callable[[Tensor], Tensor], dim: int, iters: int = 10,
                   seed: int = 0, tol: float = 0.0, dtype=torch.float32,
                   start: Optional[Tensor] = None) -> Spectrum:
    """Lanczos on the symmetric operator ``matvec`` (a flat vector of ``dim`` in, one out) for at
    most ``iters`` iterations from a Gaussian start vector drawn with ``seed`` (or ``start``);
    stops early once the top pair's residual is at most ``tol`` times |λmax| (0: never)."""
    if iters < 1:
        raise ValueError(f"iters={iters!r} must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    q = start.to(dtype).clone() if start is not None else torch.randn(dim, generator=gen,
                                                                     dtype=dtype)
    q /= q.norm()
    basis, alphas, betas, history = [q], [], [], []
    top = bottom = residual = float("nan")
    for k in range(iters):
        w = matvec(basis[-1]).to(dtype)
        alpha = float(torch.dot(w, basis[-1]))
        alphas.append(alpha)
        for b in basis:  # full reorthogonalization (twice is enough: Kahan-Parlett)
            w -= torch.dot(w, b) * b
        for b in basis:
            w -= torch.dot(w, b) * b
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        top, bottom = float(evals[-1]), float(evals[0])
        residual = abs(beta * float(evecs[-1, -1]))
        history.append(top)
        if beta <= 1e-12 * max(abs(top), 1.0) or (tol and residual <= tol * abs(top)):
            break  # an invariant subspace, or converged
        if k + 1 < iters:
            betas.append(beta)
            basis.append(w / beta)
    return Spectrum(top, bottom, residual, history, len(alphas))
