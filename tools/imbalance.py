#!/usr/bin/env python
"""How imbalanced is a detection dataset for RetinaNet's classifier? Counts positive and negative
(anchor, class) binary samples after Detectron2's matching, for each config given.

    python tools/imbalance.py --config-file configs/builtin/retinanet_R18_shapes.yaml \\
        --config-file configs/builtin/retinanet_R18_letters.yaml --output output/imbalance

Uses each config's training dataset (DATASETS.TRAIN), its training resize (no flips, seeded
size choice: the same numbers every run; no image is decoded) and its anchors and matcher
thresholds (``focal_det.analysis.imbalance``). Also prints the paper's COCO figure for
comparison: ~1:1000 foreground:background anchors (Section 1) x 80 classes. Writes
``imbalance.json`` and ``imbalance.md`` to --output.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The paper (Section 1): "~100k anchor locations per image", foreground:background "about
# 1:1000"; 80 classes. Per (anchor, class): ~1000 * 80 negatives per positive.
PAPER_COCO = {"config": "COCO (the paper's numbers)", "num_classes": 80,
              "anchors_per_image": 100_000, "background_per_foreground_anchor": 1000,
              "negatives_per_positive": 1000 * 80}


def measure(config_file: str, num_images: int, opts) -> dict:
    import focal_det
    from detectron2.data import get_detection_dataset_dicts
    from detectron2.modeling import build_model

    from focal_det.analysis.imbalance import count_binary_samples, training_targets
    from focal_det.data import prepare_datasets

    cfg = focal_det.get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    prepare_datasets(cfg.DATASETS.TRAIN)
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    if num_images:
        dicts = dicts[:num_images]
    model = build_model(cfg).eval()
    result = count_binary_samples(model, training_targets(cfg, dicts))
    return {"config": os.path.relpath(os.path.abspath(config_file), REPO),
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", action="append", required=True,
                   help="a config (repeatable); its DATASETS.TRAIN is measured")
    p.add_argument("--num-images", type=int, default=0, help="first N images only (0: all)")
    p.add_argument("--register-coco", nargs=3, action="append",
                   metavar=("NAME", "JSON", "IMAGE_ROOT"), help="as in train_net.py")
    p.add_argument("--output", default=None, help="folder for imbalance.{json,md}")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="cfg KEY VALUE ... applied to every config")
    args = p.parse_args(argv)
    for f in args.config_file:
        if not os.path.isfile(f):
            raise SystemExit(f"--config-file {f!r} does not exist")
    from train_net import register_coco_datasets

    register_coco_datasets(args.register_coco)
    rows = [measure(f, args.num_images, args.opts) for f in args.config_file] + [PAPER_COCO]
    table = markdown(rows)
    print(table)
    if args.output:
        from focal_det.utils.files import write_report

        command = "python tools/imbalance.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        write_report(args.output, "imbalance", rows,
                     "(anchor, class) imbalance after matching", command, table)
    return rows


if __name__ == "__main__":
    main()
