#!/usr/bin/env python
"""Issue 37's report, docs/REPRODUCTION.md Section 7: the single-change runs, the measured
boundaries, λmax at init and along α-CE's first iterations, the gradient cosines and the
prediction table (the 2x rule), from finished pieces only (nothing trains).

    python tools/mechanism_report.py --runs output/mechanism/runs --probe output/mechanism/probe \\
        --check ce_a0.75=output/mechanism/check_ce_a0.75.json \\
        --check fl_g2_a0.25=output/mechanism/check_fl_g2.json --output output/mechanism
"""
import argparse
import os

from focal_det import cli
from focal_det.analysis import mechanism_report as R


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True)
    p.add_argument("--probe", required=True)
    p.add_argument("--check", action="append", default=[], metavar="LOSS=JSON",
                   help="a stability check's JSON (python -m focal_det.stability --json)")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    bad = [c for c in args.check if "=" not in c]
    if bad:
        raise SystemExit(f"--check {bad[0]!r}: expected LOSS=JSON")
    checks = dict(c.split("=", 1) for c in args.check)
    s = R.summarize(args.runs, args.probe, checks)
    table = R.markdown(s)
    command = cli.regenerate_command("tools/mechanism_report.py", argv)
    os.makedirs(args.output, exist_ok=True)
    cli.write_report(args.output, "mechanism", {"command": command, **s},
                     "Issue 37: curvature against the step size (Section 7)", command, table)
    R.plot(s, os.path.join(args.output, "mechanism.png"))
    print(table)
    return s


if __name__ == "__main__":
    cli.run_tool(main, "mechanism_report.py")
