#!/usr/bin/env python
"""Gradient norms and clipping over the first iterations of training runs, side by side.

    python tools/grad_stats.py --run fl=output/x/fl_g2_a0.25/seed0 \\
        --run ce=output/x/ce_noprior/seed0 --output output/grad_stats

Each run must have been trained with MODEL.FOCAL_DET.GRAD_STATS_ITERS > 0 (its
OUTPUT_DIR/grad_stats.jsonl). Writes OUTPUT/grad_stats.{md,json,png}.
"""
import argparse
import os

from focal_det import cli
from focal_det.analysis import grad_stats as G


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                   help="a training run's OUTPUT_DIR (repeatable)")
    p.add_argument("--title", default="Gradient norms before clipping")
    cli.add_output(p, default="output/grad_stats")
    args = p.parse_args(argv)
    summaries = []
    for spec in args.run:
        label, sep, run_dir = spec.partition("=")
        if not sep or not label or not run_dir:
            raise SystemExit(f"--run {spec!r}: expected LABEL=DIR")
        try:
            summaries.append(G.summarize(label, run_dir))
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"grad_stats.py: {e}") from None
    table = G.markdown_table(summaries)
    command = cli.regenerate_command("tools/grad_stats.py", argv)
    cli.write_report(args.output, "grad_stats", {"command": command, "runs": summaries},
                     args.title, command, table)
    G.plot(summaries, os.path.join(args.output, "grad_stats.png"), args.title)
    print(table)
    return summaries


if __name__ == "__main__":
    cli.run_tool(main, "grad_stats.py")
