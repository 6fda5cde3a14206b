"""Pictures of a run: training curves from metrics.json, predictions next to ground truth."""
import logging
import os
import textwrap
from typing import List

import numpy as np

from .metrics import read_metrics

logger = logging.getLogger(__name__)


def training_curves_figure(rows: List[dict]):
    """The figure of losses, learning rate and AP over iterations, every axis labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "total_loss" in r]
    evals = [r for r in rows if "bbox/AP" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    it = [r["iteration"] for r in train]
    for key in ("total_loss", "loss_cls", "loss_box_reg"):
        axes[0].plot(it, [r.get(key, np.nan) for r in train], label=key)
    axes[0].set(title="losses", xlabel="iteration", ylabel="loss (log scale)", yscale="log")
    axes[0].legend()
    axes[1].plot(it, [r.get("lr", np.nan) for r in train])
    axes[1].set(title="learning rate", xlabel="iteration", ylabel="learning rate")
    for key in ("bbox/AP", "bbox/AP50", "bbox/AP75"):
        axes[2].plot([r["iteration"] for r in evals], [r[key] for r in evals], "o-", label=key)
    axes[2].set(title="COCO AP (val)", xlabel="iteration", ylabel="box AP (%)", ylim=(0, 100))
    axes[2].legend()
    fig.tight_layout()
    return fig


def plot_training_curves(output_dir: str) -> str:
    """Plot losses, learning rate and AP from ``output_dir/metrics.json``; return the PNG path."""
    import matplotlib.pyplot as plt

    fig = training_curves_figure(read_metrics(output_dir))
    path = os.path.join(output_dir, "training_curves.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def with_caption(image: np.ndarray, text: str, height: int = 28) -> np.ndarray:
    """``image`` (H, W, 3) under a white band holding ``text`` in black."""
    import cv2

    band = np.full((height, image.shape[1], 3), 255, dtype=np.uint8)
    scale = min(0.7, max(0.35, image.shape[1] / 700))
    cv2.putText(band, text, (6, height - 9), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([band, image], axis=0)


def save_prediction_images(cfg, model, dataset_name: str, out_dir: str, num_images: int,
                           score_thresh: float = 0.3) -> List[str]:
    """Draw ground truth (left) and predictions (right) with Detectron2's Visualizer, each half
    captioned."""
    import cv2
    import torch
    import tqdm
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import transforms as T
    from detectron2.utils.visualizer import Visualizer

    os.makedirs(out_dir, exist_ok=True)
    metadata = MetadataCatalog.get(dataset_name)
    dicts = DatasetCatalog.get(dataset_name)[:num_images]
    aug = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    model.eval()
    paths = []
    for d in tqdm.tqdm(dicts, desc="rendering predictions", unit="image"):
        bgr = cv2.imread(d["file_name"])
        h, w = bgr.shape[:2]
        image = aug.get_transform(bgr).apply_image(bgr)
        inp = {"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32")),
               "height": h, "width": w}
        with torch.no_grad():
            inst = model([inp])[0]["instances"].to("cpu")
        inst = inst[inst.scores >= score_thresh]
        rgb = bgr[:, :, ::-1]
        gt = Visualizer(rgb, metadata, scale=3.0).draw_dataset_dict(d).get_image()
        gt = with_caption(gt, f"ground truth ({len(d.get('annotations', []))} boxes)")
        pred = Visualizer(rgb, metadata, scale=3.0).draw_instance_predictions(inst).get_image()
        pred = with_caption(pred, f"prediction ({len(inst)} with score >= {score_thresh})")
        gap = np.full((gt.shape[0], 8, 3), 255, dtype=np.uint8)
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(d["file_name"]))[0] + ".png")
        cv2.imwrite(path, np.concatenate([gt, gap, pred], axis=1)[:, :, ::-1])
        paths.append(path)
    return paths


def class_stats_figure(line_runs, point_runs, image_counts, frequencies, key="pos_neg",
                       title=""):
    """EFL's g_j (``key`` of each ``class_stats.jsonl`` row) against the class's training image
    count (docs/REPRODUCTION.md, Section 8). ``line_runs``: {label: rows} drawn as g_j over the
    iterations, one line per class coloured by log10(image count), each frequency group's mean
    in bold; ``point_runs``: {label: rows} whose last row is drawn as g_j against the image count
    (log scale), one point per class and run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(image_counts, float)
    shade = plt.get_cmap("viridis")((np.log10(counts) / max(np.log10(counts.max()), 1e-9)))
    fig, axes = plt.subplots(1, len(line_runs) + 1, figsize=(6 * (len(line_runs) + 1), 4.5),
                             squeeze=False)
    for ax, (label, rows) in zip(axes[0], line_runs.items()):
        it = [r["iteration"] + 1 for r in rows]
        g = np.array([r[key] for r in rows])  # (points, K)
        marker = "." if len(it) < 3 else None  # a line of one point is a dot
        for j in range(g.shape[1]):
            ax.plot(it, g[:, j], color=shade[j], lw=0.8, alpha=0.8, marker=marker)
        for grp, style in (("r", "-"), ("c", "--"), ("f", ":")):
            cols = [j for j, f in enumerate(frequencies) if f == grp]
            if cols:
                ax.plot(it, g[:, cols].mean(1), "k" + style, lw=2.5, label=f"mean of group {grp}")
        ax.set(title=f"{label}: g_j over training", xlabel="iteration",
               ylabel="g_j (positive / negative gradient)", ylim=(-0.02, 1.02))
        ax.legend(loc="best", fontsize=8)
    ax = axes[0][-1]
    for i, (label, rows) in enumerate(point_runs.items()):
        if rows:
            ax.scatter(counts, rows[-1][key], s=14, alpha=0.7, label=f"{label} "
                       f"(iteration {rows[-1]['iteration'] + 1})", marker="osD^v<>"[i % 7])
    ax.set(xscale="log", title="g_j at the end against the class's training images",
           xlabel="training images of the class (log scale)", ylabel="g_j", ylim=(-0.02, 1.02))
    ax.legend(loc="best", fontsize=7)
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=matplotlib.colors.LogNorm(
        vmin=max(counts.min(), 1), vmax=counts.max()))
    fig.colorbar(sm, ax=list(axes[0][:-1]) or None, label="training images of the class")
    if title:  # wrapped: a title wider than the panels would widen the saved (tight) figure
        fig.suptitle("\n".join(textwrap.wrap(title, int(13 * fig.get_figwidth()))), fontsize=9,
                     y=1.0, va="bottom")  # above the panels' titles, however many lines
    return fig
