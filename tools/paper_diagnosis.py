#!/usr/bin/env python
"""Issue 28: why α-CE diverges on the faithful recipe (docs/REPRODUCTION.md).

Train the diagnosis grid first (α-CE α .75, one change each; every run the same MAX_ITER, no LR
step, gradient norms of every iteration):

    python tools/ablate.py --config-file configs/builtin/retinanet_R18_letters_paper_6it.yaml \\
        --grid letters_paper_diagnosis --iters 700 --seeds 0 1 --output output/diagnosis \\
        MODEL.WEIGHTS output/pretrain_R18_glyphs/backbone.pth

then

    python tools/paper_diagnosis.py report --runs output/diagnosis
        # per change and seed: finite or NaN at iteration N, final loss, class-conv gradient
        # over the first iterations; width-preserving init against 256 channels; which tensor
        # group's gradient grows first in every diverged run -> OUTPUT/diagnosis.{md,json,png}
    python tools/paper_diagnosis.py rms \\
        --config-file configs/builtin/retinanet_R18_letters_paper_6it.yaml \\
        --widths 64 256 --head-weight-init fixed width_preserving --output output/diagnosis/rms
        # RMS of res3-res5, P3-P7 and the head's towers at initialization (pretrained backbone
        # from MODEL.WEIGHTS), on a batch of training images -> OUTPUT/feature_rms.{md,json}
"""
import argparse
import os

from focal_det import cli
from focal_det.analysis import diagnosis as D
from focal_det.analysis.grids import load_grid


def _seeds(runs_dir, entries):
    seeds = set()
    for e in entries:
        folder = os.path.join(runs_dir, e.name)
        if os.path.isdir(folder):
            seeds |= {int(d[4:]) for d in os.listdir(folder)
                      if d.startswith("seed") and d[4:].isdigit()}
    return sorted(seeds)


def report(args, argv):
    entries = load_grid(args.grid)
    if not os.path.isdir(args.runs):
        raise SystemExit(f"--runs {args.runs!r} does not exist (train the grid with "
                         "tools/ablate.py first)")
    seeds = args.seeds if args.seeds is not None else _seeds(args.runs, entries)
    if not seeds:
        raise SystemExit(f"--runs {args.runs!r} holds no run of --grid {args.grid}")
    summary = D.summarize(args.runs, entries, seeds, args.window)
    output = args.output or args.runs
    title = (f"Diagnosis ({args.grid}): α-CE α .75 on the faithful recipe, one change each; "
             f"seeds {seeds}")
    table = D.markdown(summary)
    command = cli.regenerate_command(["tools/paper_diagnosis.py"], argv)
    cli.write_report(output, "diagnosis", {"command": command, **summary}, title, command, table)
    D.plot(summary, os.path.join(output, "diagnosis.png"), title)
    print(table)
    print(f"[paper_diagnosis] table, JSON and chart in {output}/diagnosis.{{md,json,png}}")
    return summary


def rms(args, argv):
    from focal_det.analysis import feature_rms as F

    if args.num_images < 1:
        raise SystemExit(f"--num-images must be >= 1, got {args.num_images}")
    base = cli.load_run_config(args.config_file, args.opts)
    weights = base.MODEL.WEIGHTS if args.weights is None else args.weights
    if weights and not os.path.isfile(weights):
        raise SystemExit(f"weights {weights!r} do not exist (run make pretrain, or pass "
                         "--weights '' for a randomly initialized backbone)")
    batch = F.training_batch(base, args.num_images)
    rows = []
    for width in args.widths:
        for init in args.head_weight_init:
            cfg = F.variant_config(args.config_file, args.opts, width, init)
            per_seed = [F.measure(cfg, weights, batch, seed) for seed in args.seeds]
            rows.append({"label": f"{width} channels, head init {init}", "width": width,
                         "head_weight_init": init, "rms": F.mean_over_seeds(per_seed),
                         "rms_per_seed": per_seed})
    table = F.markdown(rows)
    command = cli.regenerate_command(["tools/paper_diagnosis.py"], argv)
    title = (f"RMS at initialization on {len(batch)} training images "
             f"({os.path.relpath(args.config_file)}, weights {weights or 'none'}; mean over "
             f"FPN and head init seeds {args.seeds})")
    cli.write_report(args.output, "feature_rms", {"command": command, "weights": weights,
                                                  "images": len(batch), "rows": rows},
                     title, command, table)
    print(table)
    print(f"[paper_diagnosis] table and JSON in {args.output}/feature_rms.{{md,json}}")
    return rows


def get_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="the diagnosis table from finished runs")
    r.add_argument("--runs", required=True, help="tools/ablate.py's --output of the grid")
    r.add_argument("--grid", default="letters_paper_diagnosis",
                   help="the grid the runs were trained with (its names and notes)")
    r.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="default: every seed folder found")
    r.add_argument("--window", type=int, default=D.WINDOW,
                   help="iterations [0, WINDOW) for the class-conv gradient and the width test")
    cli.add_output(r, what="the report (default: --runs)")
    m = sub.add_parser("rms", help="RMS of res3-res5, P3-P7 and the towers at initialization")
    cli.add_config_args(m)  # .yaml or LazyConfig .py, read as train_net.py reads it
    m.add_argument("--weights", default=None,
                   help="backbone or model weights (default: the config's MODEL.WEIGHTS)")
    m.add_argument("--num-images", type=int, default=8,
                   help="training images in the batch (default 8, the recipe's batch)")
    m.add_argument("--widths", type=int, nargs="+", default=[64],
                   help="FPN and head widths (MODEL.FPN.OUT_CHANNELS; in a .py config "
                        "model.backbone.out_channels and the head's channels)")
    m.add_argument("--head-weight-init", nargs="+", default=["fixed"],
                   choices=("fixed", "width_preserving"))
    m.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="RNG seeds of the FPN's and head's init (the table: their mean)")
    cli.add_output(m, default="output/diagnosis/rms")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    return {"report": report, "rms": rms}[args.command](args, argv)


if __name__ == "__main__":
    cli.run_tool(main, "paper_diagnosis.py")
