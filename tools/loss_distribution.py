#!/usr/bin/env python
"""Figure 4 of the paper: how the focal loss of a trained detector is distributed over its
positive and negative samples, for several gamma.

    python tools/loss_distribution.py --config-file configs/builtin/retinanet_R18_shapes.yaml \\
        --weights output/demo/model_final.pth --output output/loss_distribution

For every image, the model's logits are computed and its anchors labeled exactly as in training
(Detectron2's matcher: foreground, background, ignored). Samples are the binary classifiers the
loss is defined on, one per (anchor, class) of every non-ignored anchor: positives are the
(foreground anchor, its GT class) pairs, negatives all other pairs. Then, as in the paper, FL
with each gamma is applied to the *same* logits, each set's losses are normalized to sum to 1 and
sorted from the easiest to the hardest, and their cumulative sum is plotted against the fraction
of samples. alpha only rescales a whole set, so it does not change a normalized curve; it is
not applied.

Writes ``loss_distribution.png``, ``loss_distribution.json`` (curves sampled at 201 fractions,
and for each gamma and set: the share of the loss carried by the hardest 1/5/10/20/50% of the
samples, and the fraction of hardest samples that carries half of the loss) and a markdown
summary ``loss_distribution.md``.
"""
import argparse
import json
import os
import sys
from typing import Dict, List

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

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


def get_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="trained model (.pth or Detectron2 .pkl)")
    p.add_argument("--dataset", default=None, help="dataset name (default: DATASETS.TEST[0])")
    p.add_argument("--register-coco", nargs=3, action="append",
                   metavar=("NAME", "JSON", "IMAGE_ROOT"), help="as in train_net.py")
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--gammas", type=float, nargs="+", default=[0, 0.5, 1, 2])
    p.add_argument("--max-negatives-per-image", type=int, default=200_000,
                   help="uniform random subset of negatives kept per image (memory bound)")
    p.add_argument("--output", required=True)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="cfg KEY VALUE ...")
    return p


def main(argv=None) -> Dict[str, dict]:
    args = get_parser().parse_args(argv)
    import focal_det
    from focal_det.checkpoint import FocalCheckpointer
    from focal_det.analysis.samples import collect_logits
    from focal_det.data import prepare_datasets
    from detectron2.modeling import build_model

    from train_net import register_coco_datasets

    if not os.path.isfile(args.weights):
        raise SystemExit(f"--weights {args.weights!r} does not exist")
    if any(g < 0 for g in args.gammas):
        raise SystemExit(f"--gammas must be >= 0, got {args.gammas}")
    if args.num_images < 1:
        raise SystemExit(f"--num-images must be >= 1, got {args.num_images}")
    register_coco_datasets(args.register_coco)
    cfg = focal_det.get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset is None:
        raise SystemExit("no dataset: pass --dataset or set DATASETS.TEST")
    model = build_model(cfg)
    FocalCheckpointer(model, require_same_classes=True).load(args.weights)  # before any data
    prepare_datasets([dataset])
    pos, neg, counts = collect_logits(cfg, model, dataset, args.num_images,
                                      args.max_negatives_per_image)
    result = analyze(pos, neg, sorted(set(args.gammas)))
    result["counts"] = counts
    result["weights"] = os.path.abspath(args.weights)
    result["dataset"] = dataset
    os.makedirs(args.output, exist_ok=True)
    title = (f"{os.path.basename(args.weights)} on {dataset} ({counts['images']} images): "
             "cumulative normalized FL by sample hardness")
    plot(result, os.path.join(args.output, "loss_distribution.png"), title)
    with open(os.path.join(args.output, "loss_distribution.json"), "w") as f:
        json.dump(result, f)
    table = markdown(result)
    with open(os.path.join(args.output, "loss_distribution.md"), "w") as f:
        f.write(f"# Loss distribution: {title}\n\n{table}")
    print(table)
    print(f"picture, numbers and table in {args.output}/loss_distribution.{{png,json,md}}")
    return result


if __name__ == "__main__":
    main()
