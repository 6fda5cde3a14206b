#!/usr/bin/env python
"""The verdict of the paper-faithful grid (docs/REPRODUCTION.md, Section 6) from the ablation
outputs of the faithful grid and the attribution arm.

    python tools/paper_verdict.py --faithful output/ablation_paper \\
        --stabilized output/ablation_paper_stab --parts output/ablation_paper_parts \\
        --output output/paper_verdict
    python tools/paper_verdict.py --faithful output/ablation_paper --print-best-ce
    python tools/paper_verdict.py --faithful output/paper_v2/grid \\
        --figure4 output/paper_v2/loss_distribution/loss_distribution.json --output ...

Reads each folder's ablation.json (tools/ablate.py) and, with --figure4, the
tools/loss_distribution.py JSON of the FL gamma 2 model; writes OUTPUT/paper_verdict.{md,json}:
the verdict sentence, the runs, and the paper's claims each decided by its rule
(focal_det/analysis/paper_claims.py).
"""
import argparse
import json
import os

from focal_det import cli
from focal_det.analysis import paper_claims
from focal_det.analysis import verdict as V


def _read(path, hint):
    if not os.path.exists(path):
        raise SystemExit(f"{path} does not exist: {hint}")
    with open(path) as f:
        return json.load(f)


def _grid(folder):
    return _read(os.path.join(folder, "ablation.json"),
                 f"run tools/ablate.py --output {folder} first")


def _rows(folder):
    return _grid(folder)["rows"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faithful", required=True, help="tools/ablate.py output of --grid letters_paper")
    p.add_argument("--stabilized", default=None,
                   help="tools/ablate.py output of --grid letters_stabilized")
    p.add_argument("--parts", default=None,
                   help="tools/ablate.py output of --grid letters_stabilizer_parts")
    p.add_argument("--figure4", default=None,
                   help="tools/loss_distribution.py's loss_distribution.json of FL γ 2")
    p.add_argument("--print-best-ce", action="store_true",
                   help="print the best α-balanced CE's grid name and exit")
    cli.add_output(p, default="output/paper_verdict")
    args = p.parse_args(argv)
    faithful = _rows(args.faithful)
    if args.print_best_ce:
        best = V.best_alpha_ce(faithful)
        if best is None:
            raise SystemExit(f"{args.faithful}: no α-balanced CE run has an AP")
        print(best["name"])
        return best["name"]
    stabilized = _rows(args.stabilized) if args.stabilized else []
    parts = _rows(args.parts) if args.parts else []
    v = V.verdict(faithful, stabilized, parts)
    figure4 = (_read(args.figure4, "run tools/loss_distribution.py first")
               if args.figure4 else None)
    v["claims"] = paper_claims.claims(faithful, figure4, _grid(args.faithful)["seeds"])
    table = V.markdown(v, faithful) + "\n" + paper_claims.markdown(v["claims"])
    command = cli.regenerate_command("tools/paper_verdict.py", argv)
    cli.write_report(args.output, "paper_verdict", v, "FL against CE on the paper's recipe",
                     command, table)
    print(table)
    return v


if __name__ == "__main__":
    cli.run_tool(main, "paper_verdict.py")
