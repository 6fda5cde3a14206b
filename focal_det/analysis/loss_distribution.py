"""Figure 4 of the paper: the cumulative distribution of the focal loss over positive and
negative samples, from easiest to hardest, for several gamma (``tools/loss_distribution.py``)."""
from typing import Dict, List

import torch

HARDEST = (0.01, 0.05, 0.10, 0.20, 0.50)


def normalized_cdf(losses: torch.Tensor) -> torch.Tensor:
    """Sorted from the smallest loss; cumulative share of the total (ends at 1)."""
    losses = losses.double().sort().values
    total = losses.sum()
    if total <= 0:
        return torch.linspace(0, 1, len(losses), dtype=torch.float64)
    return losses.cumsum(0) / total


def hardest_share(cdf: torch.Tensor, fraction: float) -> float:
    """Share of the loss carried by the hardest ``fraction`` of the samples."""
    n = len(cdf)
    k = int(round(n * (1 - fraction)))
    return float(1.0 - (cdf[k - 1] if k > 0 else 0.0))


def half_loss_fraction(cdf: torch.Tensor) -> float:
    """Smallest fraction of (hardest) samples that carries half of the loss."""
    n = len(cdf)
    idx = int(torch.searchsorted(cdf, torch.tensor(0.5, dtype=cdf.dtype)))
    return (n - idx) / n


def analyze(pos_logits: torch.Tensor, neg_logits: torch.Tensor,
            gammas: List[float]) -> Dict[str, dict]:
    from focal_det.losses import sigmoid_focal_loss

    out = {}
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    for name, x, t in (("positive", pos_logits, 1.0), ("negative", neg_logits, 0.0)):
        if len(x) == 0:
            raise ValueError(f"no {name} samples: too few images or no GT boxes matched")
        out[name] = {"count": len(x), "gammas": {}}
        for gamma in gammas:
            loss = sigmoid_focal_loss(x, torch.full_like(x, t), gamma=gamma, alpha=-1,
                                      reduction="none")
            cdf = normalized_cdf(loss)
            idx = (grid * (len(cdf) - 1)).round().long()
            out[name]["gammas"][f"{gamma:g}"] = {
                "fraction_of_samples": grid.tolist(),
                "cumulative_normalized_loss": cdf[idx].tolist(),
                "hardest_share": {f"{f:g}": hardest_share(cdf, f) for f in HARDEST},
                "fraction_carrying_half": half_loss_fraction(cdf),
            }
    return out


def plot(result: Dict[str, dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, name in zip(axes, ("positive", "negative")):
        for gamma, curve in result[name]["gammas"].items():
            ax.plot(curve["fraction_of_samples"], curve["cumulative_normalized_loss"],
                    label=f"γ = {gamma}")
        ax.set(title=f"{name} samples (n = {result[name]['count']:,})",
               xlabel="fraction of samples (easiest to hardest)",
               ylabel="cumulative normalized loss", xlim=(0, 1), ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(result: Dict[str, dict]) -> str:
    lines = ["| samples | γ | " + " | ".join(f"hardest {f:.0%}" for f in HARDEST)
             + " | hardest fraction with half the loss |", "|" + "---|" * (len(HARDEST) + 3)]
    for name in ("positive", "negative"):
        for gamma, c in result[name]["gammas"].items():
            shares = " | ".join(f"{c['hardest_share'][f'{f:g}']:.1%}" for f in HARDEST)
            lines.append(f"| {name} | {gamma} | {shares} | {c['fraction_carrying_half']:.2%} |")
    return "\n".join(lines) + "\n"
