#!/usr/bin/env python
"""Render the paper's loss figures by calling focal_det's loss functions (no re-typed formulas).

- figure1_focal_loss.png: loss vs probability of the ground-truth class, gamma in {0,.5,1,2,5}
- appendix_a_fl_star.png: CE, FL and FL* for several (gamma, beta), against x_t
- appendix_b_derivatives.png: dLoss/dx against x_t for CE, FL and FL* (autograd of our losses)

Usage: python tools/plot_losses.py [--output docs/figures]
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from focal_det import cli  # noqa: E402
from focal_det.losses import (  # noqa: E402
    sigmoid_cross_entropy,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
)

FL_STAR = [(1.0, 0.0), (2.0, 1.0), (4.0, 0.0), (4.0, 2.0)]


def _positive(fn, x):
    """Loss and its gradient for a positive target (t = 1), so x_t = x."""
    x = x.clone().requires_grad_()
    loss = fn(x, torch.ones_like(x))
    loss.sum().backward()
    return loss.detach(), x.grad


def figure1(out):
    p = torch.linspace(0.001, 0.999, 500, dtype=torch.float64)
    x = torch.log(p / (1 - p))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
        loss, _ = _positive(lambda z, t: sigmoid_focal_loss(z, t, gamma=gamma, alpha=-1), x)
        ax.plot(p, loss, label=f"$\\gamma$ = {gamma:g}" + (" (CE)" if gamma == 0 else ""))
    ax.axvspan(0.6, 1.0, color="0.9", label="well-classified examples")
    ax.set(xlabel="probability of ground truth class", ylabel="loss", ylim=(0, 5),
           title="Figure 1: focal loss, FL = -(1 - $p_t$)$^\\gamma$ log($p_t$)")
    ax.legend()
    return _save(fig, out, "figure1_focal_loss.png")


def appendix_a(out):
    x = torch.linspace(-5, 5, 500, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(x, _positive(lambda z, t: sigmoid_cross_entropy(z, t), x)[0], "k", label="CE")
    ax.plot(x, _positive(lambda z, t: sigmoid_focal_loss(z, t, gamma=2.0, alpha=-1), x)[0],
            "k--", label="FL $\\gamma$=2")
    for gamma, beta in FL_STAR:
        loss, _ = _positive(
            lambda z, t: sigmoid_focal_loss_star(z, t, gamma=gamma, beta=beta, alpha=-1), x)
        ax.plot(x, loss, label=f"FL* $\\gamma$={gamma:g}, $\\beta$={beta:g}")
    ax.set(xlabel="$x_t$", ylabel="loss", ylim=(0, 5), title="Appendix A: FL* vs CE and FL")
    ax.legend()
    return _save(fig, out, "appendix_a_fl_star.png")


def appendix_b(out):
    x = torch.linspace(-10, 10, 800, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    _, g = _positive(lambda z, t: sigmoid_cross_entropy(z, t), x)
    ax.plot(x, g, "k", label="CE")
    for gamma in (2.0, 5.0):
        _, g = _positive(lambda z, t: sigmoid_focal_loss(z, t, gamma=gamma, alpha=-1), x)
        ax.plot(x, g, "--", label=f"FL $\\gamma$={gamma:g}")
    for gamma, beta in FL_STAR[1:3]:
        _, g = _positive(
            lambda z, t: sigmoid_focal_loss_star(z, t, gamma=gamma, beta=beta, alpha=-1), x)
        ax.plot(x, g, label=f"FL* $\\gamma$={gamma:g}, $\\beta$={beta:g}")
    ax.set(xlabel="$x_t$", ylabel="dLoss / dx (y = +1)", ylim=(-1.5, 0.1),
           title="Appendix B: derivatives")
    ax.legend()
    return _save(fig, out, "appendix_b_derivatives.png")


def _save(fig, out, name):
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="docs/figures")
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    for path in (figure1(args.output), appendix_a(args.output), appendix_b(args.output)):
        print(path)


if __name__ == "__main__":
    cli.run_tool(main, "plot_losses.py")
