"""What the paper attributes focal loss's gain to (Sections 1 and 3.2): with cross entropy the
many easy negatives (p_t > 0.5) carry most of the classification loss and of its gradient; FL
down-weights them.

For given logits of positive and negative (anchor, class) samples (``samples.collect_logits``)
and a loss (``FocalLoss`` with gamma 0 is alpha-balanced CE), this computes the share of the
summed loss, and of the gradient with respect to the logits, that comes from easy negatives.
The gradient share is given twice: of the L1 mass sum |dL/dx| and of the squared L2 norm
sum (dL/dx)^2 (both add up over samples; the normalizer of the loss cancels in every share).
"""
from typing import Dict

import torch

from ..losses import sigmoid_focal_loss


def loss_and_grad(logits: torch.Tensor, target: float, gamma: float, alpha: float):
    """Per-sample loss and dloss/dlogit (float64) for targets all equal to ``target``."""
    x = logits.detach().double().requires_grad_(True)
    loss = sigmoid_focal_loss(x, torch.full_like(x, target), alpha, gamma, "none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def easy_negative_shares(pos_logits: torch.Tensor, neg_logits: torch.Tensor, gamma: float,
                         alpha: float) -> Dict[str, float]:
    """Shares (0..1) of loss and gradient from easy negatives, with sample counts."""
    lp, gp = loss_and_grad(pos_logits, 1.0, gamma, alpha)
    ln, gn = loss_and_grad(neg_logits, 0.0, gamma, alpha)
    easy = neg_logits.double() < 0  # p < 0.5, i.e. p_t = 1 - p > 0.5
    total_loss = lp.sum() + ln.sum()
    total_l1 = gp.abs().sum() + gn.abs().sum()
    total_l2 = gp.pow(2).sum() + gn.pow(2).sum()
    return {
        "positives": len(pos_logits),
        "negatives": len(neg_logits),
        "easy_negatives": int(easy.sum()),
        "easy_fraction_of_negatives": float(easy.double().mean()) if len(easy) else 0.0,
        "loss_share_easy_negatives": float(ln[easy].sum() / total_loss),
        "loss_share_all_negatives": float(ln.sum() / total_loss),
        "grad_l1_share_easy_negatives": float(gn[easy].abs().sum() / total_l1),
        "grad_l2sq_share_easy_negatives": float(gn[easy].pow(2).sum() / total_l2),
        "mean_loss_per_positive": float(lp.mean()) if len(lp) else 0.0,
        "loss_of_easy_negatives_per_positive": float(ln[easy].sum() / max(len(lp), 1)),
    }


def markdown(rows) -> str:
    lines = ["| model | loss | negatives / image | hard negatives (p_t <= 0.5) / image | "
             "loss share: easy negatives | loss share: all negatives | "
             "gradient share (L1): easy negatives | gradient share (L2²): easy negatives |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = max(r["images"], 1)
        hard = (r["negatives"] - r["easy_negatives"]) / n
        lines.append(f"| {r['model']} | {r['loss']} | {r['negatives'] / n:,.0f} | {hard:,.1f} | "
                     f"{r['loss_share_easy_negatives']:.1%} | {r['loss_share_all_negatives']:.1%}"
                     f" | {r['grad_l1_share_easy_negatives']:.1%} | "
                     f"{r['grad_l2sq_share_easy_negatives']:.1%} |")
    return "\n".join(lines) + "\n"
