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
import os

from focal_det import cli

from focal_det.analysis.loss_distribution import analyze, markdown, plot


def get_parser():
    import argparse

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(p)
    p.add_argument("--weights", required=True, help="trained model (.pth or Detectron2 .pkl)")
    p.add_argument("--dataset", default=None,
                   help="dataset name (default: the config's test set, DATASETS.TEST[0] or "
                        "dataloader.test.dataset.names)")
    cli.add_register_coco(p)
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--gammas", type=float, nargs="+", default=[0, 0.5, 1, 2])
    p.add_argument("--max-negatives-per-image", type=int, default=200_000,
                   help="uniform random subset of negatives kept per image (memory bound)")
    p.add_argument("--output", required=True)
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    from focal_det.analysis.samples import collect_logits
    from focal_det.checkpoint import FocalCheckpointer
    from focal_det.data import prepare_datasets
    from focal_det.inference import inference_spec

    if not os.path.isfile(args.weights):
        raise SystemExit(f"--weights {args.weights!r} does not exist")
    if any(g < 0 for g in args.gammas):
        raise SystemExit(f"--gammas must be >= 0, got {args.gammas}")
    if args.num_images < 1:
        raise SystemExit(f"--num-images must be >= 1, got {args.num_images}")
    cli.register_coco_datasets(args.register_coco)
    cfg = cli.load_run_config(args.config_file, args.opts)
    spec = inference_spec(cfg)
    dataset = args.dataset or spec.test_dataset
    if dataset is None:
        raise SystemExit("no dataset: pass --dataset or set the config's test set")
    model = spec.build_model()
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
    table = markdown(result)
    cli.write_report(args.output, "loss_distribution", result, f"Loss distribution: {title}",
                     cli.regenerate_command("tools/loss_distribution.py", argv), table)
    print(table)
    print(f"picture, numbers and table in {args.output}/loss_distribution.{{png,json,md}}")
    return result


if __name__ == "__main__":
    cli.run_tool(main, "loss_distribution.py")
