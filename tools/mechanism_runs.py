#!/usr/bin/env python
"""Issue 37 (c), docs/REPRODUCTION.md Section 7: the single-change runs of α-CE α .75 on the
corrected recipe, in the order and with the stop rules fixed before the runs
(``focal_det.analysis.mechanism``): the LR sweep from the top, the single changes, FL γ 2 upward,
the other α-CEs at the candidate LRs. Resumable (finished runs are read, an interrupted one
resumes).

    OMP_NUM_THREADS=1 python tools/mechanism_runs.py --output output/mechanism/runs \\
        MODEL.WEIGHTS output/pretrain_R18_glyphs/backbone.pth
"""
import argparse
import os

from focal_det import cli
from focal_det.analysis import ablation as A
from focal_det.analysis.mechanism import run_plan

CONFIG = os.path.join("configs", "builtin", "retinanet_R18_letters_paper.yaml")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=CONFIG, help=f"default: {CONFIG}")
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--output", required=True)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--parallel", action="store_true",
                   help="each entry's seeds side by side (one process each; set OMP_NUM_THREADS)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = cli.parse_args(p, argv)
    cli.check_config_file(args.config_file, lazy=False)
    args.config_file, args.output = os.path.abspath(args.config_file), os.path.abspath(args.output)
    args.eval_points, args.warmup, args.register_coco, args.keep_checkpoints = 1, "config", None, False
    os.makedirs(args.output, exist_ok=True)
    common = A.budget_opts(args.iters, 1, scaled_warmup=True)  # the config's own warm-up
    results = run_plan(lambda entry, seed: A.run_one(entry, seed, args, common), args.seeds,
                       parallel=args.parallel)
    for name, rs in results.items():
        print(name, [r.get("status") + (f"@{r['diverged_at']}" if "diverged_at" in r else "")
                     for r in rs])
    return results


if __name__ == "__main__":
    cli.run_tool(main, "mechanism_runs.py")
