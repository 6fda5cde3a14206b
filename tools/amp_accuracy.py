#!/usr/bin/env python
"""Collect issue 29's accuracy check from finished runs (``make amp-accuracy`` makes them):
JSON with the final COCO AP of fp32 and bf16 training and of the fp32 model under bf16.

    python tools/amp_accuracy.py output/amp_acc --output benchmarks/results
"""
import argparse
import json
import os

from focal_det import cli
from focal_det.analysis.amp_accuracy import collect
from focal_det.utils.files import atomic_write_text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", help="the folder holding fp32/, bf16/ and fp32_eval_bf16/")
    cli.add_output(p, what="amp_accuracy_cpu.json")
    args = p.parse_args(argv)
    result = {**collect(args.runs), "command": cli.regenerate_command("tools/amp_accuracy.py")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        atomic_write_text(os.path.join(args.output, "amp_accuracy_cpu.json"), text + "\n")


if __name__ == "__main__":
    cli.run_tool(main, "amp_accuracy.py")
