"""How imbalanced the classification problem is: positives and negatives among the (anchor,
class) binary classifiers the loss is defined on, after Detectron2's matching.

For each image the anchors are labeled exactly as in training (``model.label_anchors``: the
config's IoU thresholds, low-quality matches). Ignored anchors are left out, as the loss leaves
them out. A foreground anchor is one positive (its GT class) and K - 1 negatives; a background
anchor is K negatives. Only image sizes and boxes matter, so no image is decoded and no backbone
runs: :func:`training_targets` applies the training resize to the annotations alone.
"""
import os
from typing import Dict, Iterable, Tuple

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ..lazy_run import train_augmentations


def training_targets(cfg, dataset_dicts: Iterable[dict]):
    """(image size, GT Instances) per dict, as the training ``DatasetMapper`` makes them, from
    the dict's ``height``/``width`` without reading the image. Horizontal flips are left out
    (they do not change which boxes exist) and the resize's random choice is seeded, so the
    count is the same on every run."""
    augs = T.AugmentationList([a for a in train_augmentations(cfg)
                               if not isinstance(a, T.RandomFlip)])
    rng_state = np.random.get_state()
    np.random.seed(0)
    try:
        for d in dataset_dicts:
            aug_input = T.AugInput(np.zeros((d["height"], d["width"]), np.uint8))
            transforms = augs(aug_input)
            size: Tuple[int, int] = aug_input.image.shape[:2]
            annos = [utils.transform_instance_annotations(a, transforms, size)
                     for a in d.get("annotations", []) if a.get("iscrowd", 0) == 0]
            yield size, utils.filter_empty_instances(utils.annotations_to_instances(annos, size))
    finally:
        np.random.set_state(rng_state)


def _feature_shapes(model, height: int, width: int):
    """Shapes of the head's input features for one padded image, from the backbone strides."""
    div = max(model.backbone.size_divisibility, 1)
    h, w = -(-height // div) * div, -(-width // div) * div
    shapes = model.backbone.output_shape()
    return [torch.empty(1, 0, -(-h // shapes[f].stride), -(-w // shapes[f].stride))
            for f in model.head_in_features]


@torch.no_grad()
def count_binary_samples(model, targets: Iterable[Tuple[Tuple[int, int], Instances]]
                         ) -> Dict[str, float]:
    """Totals over ``targets`` ((height, width), GT Instances) per image, e.g. from
    :func:`training_targets`, and the ratio of negative to positive (anchor, class) samples."""
    k = model.num_classes
    anchors_by_size = {}
    totals = dict(images=0, anchors=0, ignored_anchors=0, foreground_anchors=0,
                  gt_boxes=0, positives=0, negatives=0)
    for (h, w), gt in targets:
        if (h, w) not in anchors_by_size:
            anchors_by_size[(h, w)] = model.anchor_generator(_feature_shapes(model, h, w))
        anchors = anchors_by_size[(h, w)]
        (labels,), _ = model.label_anchors(anchors, [gt])
        valid = int((labels >= 0).sum())
        fg = int(((labels >= 0) & (labels < k)).sum())
        totals["images"] += 1
        totals["anchors"] += len(labels)
        totals["ignored_anchors"] += len(labels) - valid
        totals["foreground_anchors"] += fg
        totals["gt_boxes"] += len(gt)
        totals["positives"] += fg
        totals["negatives"] += valid * k - fg
    pos = totals["positives"]
    totals["num_classes"] = k
    totals["negatives_per_positive"] = totals["negatives"] / pos if pos else float("inf")
    totals["background_per_foreground_anchor"] = (
        (totals["anchors"] - totals["ignored_anchors"] - pos) / pos if pos else float("inf"))
    n = max(totals["images"], 1)
    totals["anchors_per_image"] = totals["anchors"] / n
    totals["positives_per_image"] = pos / n
    totals["foreground_anchors_per_gt_box"] = pos / max(totals["gt_boxes"], 1)
    return totals


# The paper (Section 1): "~100k anchor locations per image", foreground:background "about
# 1:1000"; 80 classes. Per (anchor, class): ~1000 * 80 negatives per positive.
PAPER_COCO = {"config": "COCO (the paper's numbers)", "num_classes": 80,
              "anchors_per_image": 100_000, "background_per_foreground_anchor": 1000,
              "negatives_per_positive": 1000 * 80}


def measure(config_file: str, num_images: int, opts) -> dict:
    """The counts for ``config_file``'s training data (first ``num_images``; 0: all); a
    ``.yaml`` or a LazyConfig ``.py`` config, read as the engine reads it."""
    from detectron2.data import get_detection_dataset_dicts

    from ..cli import load_run_config
    from ..data import prepare_datasets
    from ..inference import inference_spec

    cfg = load_run_config(config_file, opts, device="cpu")
    prepare_datasets(cfg.DATASETS.TRAIN)
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    if num_images:
        dicts = dicts[:num_images]
    model = inference_spec(cfg).build_model()
    result = count_binary_samples(model, training_targets(cfg, dicts))
    return {"config": os.path.relpath(os.path.abspath(config_file)),
            "datasets": list(cfg.DATASETS.TRAIN), **result}


def markdown(rows) -> str:
    lines = ["| data | classes | anchors / image | positives / image | fg anchors / GT box | "
             "bg : fg anchors | negatives : positives per (anchor, class) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = ", ".join(r.get("datasets", [])) or r["config"]
        per_image = f"{r['positives_per_image']:.2f}" if "positives_per_image" in r else "n/a"
        per_box = (f"{r['foreground_anchors_per_gt_box']:.2f}"
                   if "foreground_anchors_per_gt_box" in r else "n/a")
        lines.append(f"| {name} | {r['num_classes']} | {r['anchors_per_image']:,.0f} | "
                     f"{per_image} | {per_box} | {r['background_per_foreground_anchor']:,.0f} : 1 "
                     f"| **{r['negatives_per_positive']:,.0f} : 1** |")
    return "\n".join(lines) + "\n"
