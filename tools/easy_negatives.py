#!/usr/bin/env python
"""Share of the classification loss and of its gradient that easy negatives (p_t > 0.5) carry,
for CE and FL, on a model at initialization and after training (the paper's Sections 1, 3.2).

    python tools/easy_negatives.py --config-file configs/builtin/retinanet_R18_letters.yaml \\
        --model init=init --model ce_a0.75=output/ablation_letters/ce_a0.75/seed0/model_final.pth \\
        --model fl_g2=output/ablation_letters/fl_g2_a0.25/seed0/model_final.pth \\
        --output output/easy_negatives

Each ``--model NAME=WEIGHTS`` is a model state; WEIGHTS ``init`` is a freshly built model (the
config's prior initialization, SEED), whose logits are computed with per-image normalization
statistics as in its first training step. Trained weights load safely (FocalCheckpointer) and
run in eval mode. Each ``--loss NAME=GAMMA,ALPHA`` is applied to every model's logits (default:
CE with alpha .75, i.e. gamma 0, and FL gamma 2, alpha .25). Writes ``easy_negatives.{json,md}``.
"""
import argparse
import os

from focal_det import cli

DEFAULT_LOSSES = ["CE_a0.75=0,0.75", "FL_g2_a0.25=2,0.25"]


def _pair(text: str, what: str):
    if "=" not in text:
        raise SystemExit(f"--{what} {text!r}: expected NAME=VALUE")
    name, value = text.split("=", 1)
    return name, value


def _loss(text: str):
    name, value = _pair(text, "loss")
    try:
        gamma, alpha = (float(v) for v in value.split(","))
    except ValueError:
        raise SystemExit(f"--loss {text!r}: expected NAME=GAMMA,ALPHA, e.g. FL=2,0.25") from None
    return name, gamma, alpha


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(p)
    p.add_argument("--model", action="append", required=True, metavar="NAME=WEIGHTS")
    p.add_argument("--loss", action="append", default=None, metavar="NAME=GAMMA,ALPHA")
    p.add_argument("--dataset", default=None,
                   help="default: the config's test set (DATASETS.TEST[0] or "
                        "dataloader.test.dataset.names)")
    p.add_argument("--num-images", type=int, default=100)
    cli.add_register_coco(p)
    cli.add_output(p, what="easy_negatives.{json,md}")
    args = p.parse_args(argv)
    models = [_pair(m, "model") for m in args.model]
    losses = [_loss(x) for x in (args.loss or DEFAULT_LOSSES)]
    for name, weights in models:
        if weights != "init" and not os.path.isfile(weights):
            raise SystemExit(f"--model {name}: weights file {weights!r} does not exist")

    import torch

    from focal_det.analysis.easy_negatives import easy_negative_shares, markdown
    from focal_det.analysis.samples import collect_logits
    from focal_det.checkpoint import FocalCheckpointer
    from focal_det.data import prepare_datasets
    from focal_det.inference import inference_spec

    cli.register_coco_datasets(args.register_coco)
    cfg = cli.load_run_config(args.config_file, args.opts, device="cpu")
    spec = inference_spec(cfg)
    dataset = args.dataset or spec.test_dataset
    states = []  # every weights file is loaded (and checked) before any data is read
    for name, weights in models:
        torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
        model = spec.build_model()
        if weights != "init":
            FocalCheckpointer(model, require_same_classes=True).load(weights)
        states.append((name, weights, model))
    prepare_datasets([dataset])
    rows = []
    for name, weights, model in states:
        pos, neg, counts = collect_logits(cfg, model, dataset, args.num_images,
                                          max_negatives_per_image=10**9,
                                          batch_norm_stats=weights == "init")
        for loss_name, gamma, alpha in losses:
            shares = easy_negative_shares(pos, neg, gamma, alpha)
            rows.append({"model": name, "weights": weights, "loss": loss_name, "gamma": gamma,
                         "alpha": alpha, "dataset": dataset, **counts, **shares})
    table = markdown(rows)
    print(table)
    if args.output:
        command = cli.regenerate_command("tools/easy_negatives.py", argv)
        cli.write_report(args.output, "easy_negatives", rows, f"Easy negatives (p_t > 0.5) on "
                     f"{dataset}, {args.num_images} images", command, table)
    return rows


if __name__ == "__main__":
    cli.run_tool(main, "easy_negatives.py")
