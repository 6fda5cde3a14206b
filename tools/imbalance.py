#!/usr/bin/env python
"""How imbalanced is a detection dataset for RetinaNet's classifier? Counts positive and negative
(anchor, class) binary samples after Detectron2's matching, for each config given.

    python tools/imbalance.py --config-file configs/builtin/retinanet_R18_shapes.yaml \\
        --config-file configs/builtin/retinanet_R18_letters.yaml --output output/imbalance

Each config is a .yaml or a LazyConfig .py one (read as train_net.py reads it). Uses each
config's training dataset (DATASETS.TRAIN), its training resize (no flips, seeded
size choice: the same numbers every run; no image is decoded) and its anchors and matcher
thresholds (``focal_det.analysis.imbalance``). Also prints the paper's COCO figure for
comparison: ~1:1000 foreground:background anchors (Section 1) x 80 classes. Writes
``imbalance.json`` and ``imbalance.md`` to --output.
"""
import argparse

from focal_det import cli
from focal_det.analysis.imbalance import PAPER_COCO, markdown, measure


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(p, repeatable=True)
    p.add_argument("--num-images", type=int, default=0, help="first N images only (0: all)")
    cli.add_register_coco(p)
    cli.add_output(p, what="imbalance.{json,md}")
    args = p.parse_args(argv)
    for f in args.config_file:
        cli.load_run_config(f)  # every config readable before any counting
    cli.register_coco_datasets(args.register_coco)
    rows = [measure(f, args.num_images, args.opts) for f in args.config_file] + [PAPER_COCO]
    table = markdown(rows)
    print(table)
    if args.output:
        cli.write_report(args.output, "imbalance", rows,
                         "(anchor, class) imbalance after matching",
                         cli.regenerate_command("tools/imbalance.py", argv), table)
    return rows


if __name__ == "__main__":
    cli.run_tool(main, "imbalance.py")
