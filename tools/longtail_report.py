#!/usr/bin/env python
"""EFL's claim on the long-tailed built-in data by docs/REPRODUCTION.md Section 8's rule, from
the ``--grid longtail`` runs (focal_det.analysis.longtail_verdict): every seed's AP, APr, APc and
APf, each configuration's mean and seed spread, the rule for the pairs without and with
repeat-factor sampling, and the verdict. Reads finished runs only; trains nothing.

    python tools/longtail_report.py --runs output/longtail --output output/longtail/report
"""
import argparse
import os

from focal_det import cli
from focal_det.analysis.longtail_verdict import markdown, summarize


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="tools/ablate.py --grid longtail's --output")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    cli.add_output(p, default="output/longtail/report")
    args = p.parse_args(argv)
    if not os.path.isdir(args.runs):
        raise SystemExit(f"--runs {args.runs}: no such folder (run tools/ablate.py --grid "
                         "longtail first, docs/REPRODUCTION.md Section 8)")
    s = summarize(args.runs, args.seeds)
    command = cli.regenerate_command("tools/longtail_report.py", argv)
    text = markdown(s)
    cli.write_report(args.output, "longtail", {"command": command, **s},
                     "EFL's claim on the long-tailed data (docs/REPRODUCTION.md Section 8)",
                     command, text)
    print(text)
    return s


if __name__ == "__main__":
    cli.run_tool(main, "longtail_report.py")
