#!/usr/bin/env python
"""Classification-loss ablation: train a grid of configs x seeds through ``train_net.py`` and
tabulate COCO box AP (mean and spread over seeds) in markdown, JSON and a PNG chart.

    python tools/ablate.py --output output/ablation                 # the paper grid, built-in data
    python tools/ablate.py --grid gamma --iters 300 --seeds 0 1 2 --output output/gamma
    python tools/ablate.py --register-coco mine_train train.json imgs/ \\
        --register-coco mine_val val.json imgs/ --train mine_train --test mine_val --output out/

Every run is a separate ``python -m focal_det.engine`` (= ``train_net.py``) process (the normal training path: Detectron2's
trainer, our checkpointer, the COCO evaluator at the last iteration) in
``OUTPUT/<run>/seed<S>``. A run that has finished (``result.json``) is never repeated; one that
was interrupted continues from its last checkpoint (``--resume``). A run whose loss becomes
NaN/inf is recorded as diverged, with the iteration, and the grid goes on. Seeds are the outer
loop, so a grid stopped early still has one complete row per config.
"""
import argparse
import os
from typing import List

from focal_det import cli
from focal_det.analysis import ablation as A
from focal_det.analysis.divergence import plot_loss_curves
from focal_det.analysis.ablation_report import best_of, markdown_table, plot, plot_curves, summarize

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "builtin", "retinanet_R18_shapes.yaml")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG,
                   help="base .yaml config of every run (default: the built-in shapes recipe; "
                        f"{cli.YAML_ONLY})")
    p.add_argument("--grid", default="paper",
                   help=f"built-in grid {sorted(A.GRIDS)} or a JSON file (see load_grid)")
    p.add_argument("--only", nargs="+", default=None, help="run only these entries of the grid")
    p.add_argument("--iters", type=int, default=500, help="SOLVER.MAX_ITER of every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--eval-points", type=int, default=1,
                   help="evaluate every --iters/N iterations (AP against iterations: "
                        "ap_curve in each result and ablation_curves.png)")
    p.add_argument("--warmup", choices=("fixed", "config", "scaled"), default="fixed",
                   help="fixed: min(100, iters/5) iterations (the built-in recipes' grids); "
                        "config: the config's own warm-up, whatever --iters (the faithful "
                        "recipe: Detectron's 500 iterations whatever the schedule); scaled: the "
                        "config's WARMUP_ITERS as the same share of --iters as of its MAX_ITER "
                        "(a departure from Detectron, whose warm-up does not shrink with the "
                        "schedule; docs/REPRODUCTION.md Section 6 ran with it)")
    p.add_argument("--output", required=True, help="folder for runs, table and chart")
    cli.add_register_coco(p)
    p.add_argument("--train", default=None, help="dataset name for DATASETS.TRAIN")
    p.add_argument("--test", default=None, help="dataset name for DATASETS.TEST")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep intermediate model_*.pth (model_final.pth is always kept)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild the table, JSON and charts from the finished "
                        "runs (result.json); unfinished ones are named and left out")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="cfg options added to every run (after the grid's), KEY VALUE ...")
    return p


def main(argv=None) -> List[dict]:
    args = cli.parse_args(get_parser(), argv)
    if args.iters < 1:
        raise SystemExit(f"--iters must be >= 1, got {args.iters}")
    if len(args.opts) % 2:
        raise SystemExit(f"cfg options must be KEY VALUE pairs, got {args.opts}")
    cli.check_config_file(args.config_file, lazy=False)  # every run overrides .yaml keys
    grid = A.load_grid(args.grid)
    if args.only:
        unknown = sorted(set(args.only) - {e.name for e in grid})
        if unknown:
            raise SystemExit(f"--only {unknown}: not in grid {[e.name for e in grid]}")
        grid = [e for e in grid if e.name in args.only]
    args.config_file = os.path.abspath(args.config_file)
    args.output = os.path.abspath(args.output)
    if args.register_coco:
        args.register_coco = [[n, os.path.abspath(j), os.path.abspath(r)]
                              for n, j, r in args.register_coco]

    # "config" and "scaled" leave SOLVER.WARMUP_ITERS to the config ("scaled": run_one scales it)
    common = A.budget_opts(args.iters, args.eval_points, scaled_warmup=args.warmup != "fixed")
    if args.warmup != "fixed":
        cfg = cli.load_yaml_config(args.config_file, args.opts)
        args.config_warmup = (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER)
        if args.warmup == "config":  # the config's, or an entry's own, warm-up
            # Detectron2 would squeeze a longer warm-up into the run (a steeper ramp), not cut it.
            for name, n in [("the config", cfg.SOLVER.WARMUP_ITERS)] + [
                    (e.name, int(v)) for e in grid
                    for k, v in zip(e.extra[::2], e.extra[1::2]) if k == "SOLVER.WARMUP_ITERS"]:
                if n > args.iters:
                    raise SystemExit(f"--warmup config: {name}'s SOLVER.WARMUP_ITERS ({n}) is "
                                     f"longer than --iters {args.iters}")
    if args.train:
        common += ["DATASETS.TRAIN", f"('{args.train}',)"]
        json_of = {n: j for n, j, _ in args.register_coco or ()}
        if args.train in json_of and "MODEL.RETINANET.NUM_CLASSES" not in args.opts:
            common += ["MODEL.RETINANET.NUM_CLASSES",
                       str(A.coco_num_classes(json_of[args.train]))]
    if args.test:
        common += ["DATASETS.TEST", f"('{args.test}',)"]

    missing = []
    if args.report_only:  # tabulate what has finished; name the rest
        missing = [f"{e.name}/seed{s}" for s in args.seeds for e in grid
                   if not os.path.exists(os.path.join(args.output, e.name, f"seed{s}",
                                                      "result.json"))]
        if len(missing) == len(args.seeds) * len(grid):
            raise SystemExit(f"--report-only: no run in {args.output} has finished")
        if missing:
            print(f"[ablate] --report-only: not finished, left out: {', '.join(missing)}")
    os.makedirs(args.output, exist_ok=True)
    results = [A.run_one(entry, seed, args, common) for seed in args.seeds for entry in grid
               if f"{entry.name}/seed{seed}" not in missing]
    if args.dry_run:
        return results
    rows = summarize(grid, results)
    title = (f"{os.path.relpath(args.config_file)}, {args.iters} iterations, "
             f"seeds {args.seeds}")
    table = markdown_table(rows)
    if missing:
        table += f"\nNot finished (left out): {', '.join(missing)}\n"
    command = cli.regenerate_command("tools/ablate.py", argv)
    cli.write_report(args.output, "ablation",
                     {"config": args.config_file, "iters": args.iters, "seeds": args.seeds,
                      "eval_points": args.eval_points, "command": command, "rows": rows,
                      "runs": results, "not_finished": missing}, f"Loss ablation: {title}", command, table)
    plot(rows, os.path.join(args.output, "ablation.png"), title)
    plot_loss_curves(results, os.path.join(args.output, "ablation_loss.png"),
                     title + "; loss_cls of every run (red: diverged or exploded)")
    if args.eval_points > 1:
        ce = best_of(rows, ("BalancedCrossEntropy", "CrossEntropy"))
        fl = [r for r in rows if r["name"] == "fl_g2_a0.25"] or [best_of(rows, ("FocalLoss",))]
        highlight = [r["name"] for r in (ce, fl[0]) if r]
        plot_curves(rows, os.path.join(args.output, "ablation_curves.png"),
                    title + f"; highlighted: best CE and FL γ 2 ({', '.join(highlight)})",
                    highlight)
    print(table)
    print(f"[ablate] table, JSON and charts in {args.output}/ablation.{{md,json,png}}, "
          "ablation_loss.png")
    return results


if __name__ == "__main__":
    cli.run_tool(main, "ablate.py")
