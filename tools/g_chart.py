#!/usr/bin/env python
"""The chart of Equalized Focal Loss's g_j against each class's training image count
(docs/REPRODUCTION.md, Section 8): g_j over training for the runs named by --lines, one line per
class coloured by its image count, and g_j at the end against the image count for every run;
beside the PNG, the same in numbers (<name>.md / .json: focal_det.analysis.efl_g).

    python tools/g_chart.py --lines output/longtail/efl_s4/seed0 output/longtail/efl_s4_rfs/seed0 \\
        --points output/longtail/efl_s4*/seed* --output output/longtail/g_chart.png

Reads each run's ``class_stats.jsonl`` (written by EFL runs, focal_det.engine.class_stats) and
the image counts and frequency groups of --dataset's metadata (``class_image_count``,
``class_frequency``: the built-in long-tailed data has them).
"""
import argparse
import os

from focal_det import cli
from focal_det.analysis import efl_g
from focal_det.engine.class_stats import read_class_stats
from focal_det.errors import FocalDetError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", nargs="+", required=True, help="run folders drawn over training")
    p.add_argument("--points", nargs="*", default=None,
                   help="run folders drawn at their last row (default: --lines)")
    p.add_argument("--dataset", default="focal_det_longtail_train",
                   help="registered dataset whose metadata has class_image_count and "
                        "class_frequency")
    p.add_argument("--key", default="pos_neg", help="the class_stats.jsonl field (g_j)")
    p.add_argument("--output", required=True, help="the PNG to write")
    args = p.parse_args(argv)
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(args.dataset)
    counts, groups = meta.get("class_image_count", None), meta.get("class_frequency", None)
    if counts is None or groups is None:
        raise FocalDetError(f"--dataset {args.dataset!r}: its metadata has no class_image_count "
                            "/ class_frequency (the built-in focal_det_longtail_* have them)")
    runs = {}
    for run in dict.fromkeys(args.lines + (args.points or [])):
        rows = read_class_stats(run)
        if not rows:
            raise FocalDetError(f"{run}: no class_stats.jsonl rows (is it an EFL run?)")
        if any(len(r[args.key]) != len(counts) for r in rows):
            raise FocalDetError(f"{run}: {args.key} has {len(rows[0][args.key])} classes, "
                                f"--dataset {args.dataset!r} {len(counts)}")
        runs[run] = rows

    def label(run):  # the run's config and seed folders (output/longtail/efl_s4/seed0)
        return os.path.join(*os.path.normpath(os.path.abspath(run)).split(os.sep)[-2:])

    from focal_det.utils.vis import class_stats_figure

    command = cli.regenerate_command("tools/g_chart.py", argv)
    points = args.points or args.lines
    fig = class_stats_figure({label(r): runs[r] for r in args.lines},
                             {label(r): runs[r] for r in points},
                             counts, groups, key=args.key, title=command)
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(args.output, dpi=90, bbox_inches="tight")
    # the same runs in numbers: each group's g_j, r < c < f, Spearman's ρ with the image count
    summaries = {label(r): efl_g.g_summary(runs[r], counts, groups, key=args.key)
                 for r in points}
    table = efl_g.markdown(summaries)
    stem = os.path.splitext(os.path.basename(args.output))[0]
    cli.write_report(folder, stem, {"command": command, "key": args.key, "dataset": args.dataset,
                                    "runs": summaries},
                     "EFL's g_j against each class's training images", command, table)
    print(table + f"[g_chart] {args.output}, {os.path.join(folder, stem)}.{{md,json}}")
    return args.output


if __name__ == "__main__":
    cli.run_tool(main, "g_chart.py")
