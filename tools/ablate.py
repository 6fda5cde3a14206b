#!/usr/bin/env python
"""Classification-loss ablation: train a grid of configs x seeds through ``train_net.py`` and
tabulate COCO box AP (mean and spread over seeds) in markdown, JSON and a PNG chart.

    python tools/ablate.py --output output/ablation                 # the paper grid, built-in data
    python tools/ablate.py --grid gamma --iters 300 --seeds 0 1 2 --output output/gamma
    python tools/ablate.py --register-coco mine_train train.json imgs/ \\
        --register-coco mine_val val.json imgs/ --train mine_train --test mine_val --output out/

Every run is a separate ``train_net.py`` process (the normal training path: Detectron2's
trainer, our checkpointer, the COCO evaluator at the last iteration) in
``OUTPUT/<run>/seed<S>``. A run that has finished (``result.json``) is never repeated; one that
was interrupted continues from its last checkpoint (``--resume``). A run whose loss becomes
NaN/inf is recorded as diverged, with the iteration, and the grid goes on. Seeds are the outer
loop, so a grid stopped early still has one complete row per config.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from focal_det.analysis.ablation_report import (METRICS, best_of,  # noqa: E402
                                                markdown_table, plot, plot_curves, summarize)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "builtin", "retinanet_R18_shapes.yaml")
KEY = "MODEL.FOCAL_DET."


@dataclass(frozen=True)
class Entry:
    """One config of a grid: a name (its folder) and the cfg options that define it."""

    name: str
    loss: str
    gamma: Optional[float] = None
    alpha: Optional[float] = None
    beta: Optional[float] = None
    bias_init: str = "PriorProb"
    extra: Sequence[str] = ()
    paper_ap: Optional[str] = None  # the paper's number for the same setting (R-50, COCO)
    note: str = ""

    def opts(self) -> List[str]:
        opts = [KEY + "CLS_LOSS.NAME", self.loss, KEY + "HEAD.BIAS_INIT", self.bias_init]
        for key, value in (("GAMMA", self.gamma), ("ALPHA", self.alpha), ("BETA", self.beta)):
            if value is not None:
                opts += [KEY + "CLS_LOSS." + key, repr(float(value))]
        return opts + list(self.extra)

    def describe(self) -> Dict[str, str]:
        def fmt(v):
            return "" if v is None else f"{v:g}"

        return {"loss": self.loss, "gamma": fmt(self.gamma), "alpha": fmt(self.alpha),
                "beta": fmt(self.beta), "init": self.bias_init,
                "note": self.note}


NO_CLIP = ("SOLVER.CLIP_GRADIENTS.ENABLED", "False")

# The paper's Table 1a (alpha-balanced CE), Table 1b (FL, best alpha per gamma), CE without the
# prior initialization (Section 4.1: "diverges"), and Table 3 (FL*). Paper AP: R-50-FPN, 600 px,
# COCO minival (../shared/PAPER.md).
PAPER_GRID = [
    Entry("ce_a0.25", "BalancedCrossEntropy", alpha=0.25, paper_ap="10.8"),
    Entry("ce_a0.50", "BalancedCrossEntropy", alpha=0.50, paper_ap="30.2"),
    Entry("ce_a0.75", "BalancedCrossEntropy", alpha=0.75, paper_ap="31.1"),
    Entry("fl_g0_a0.75", "FocalLoss", gamma=0, alpha=0.75, paper_ap="31.1",
          note="= CE a .75"),
    Entry("fl_g0.5_a0.50", "FocalLoss", gamma=0.5, alpha=0.50, paper_ap="32.9"),
    Entry("fl_g1_a0.25", "FocalLoss", gamma=1, alpha=0.25, paper_ap="33.7"),
    Entry("fl_g2_a0.25", "FocalLoss", gamma=2, alpha=0.25, paper_ap="34.0"),
    Entry("fl_g5_a0.25", "FocalLoss", gamma=5, alpha=0.25, paper_ap="32.2"),
    Entry("ce_noprior", "CrossEntropy", bias_init="Zero", paper_ap="diverges",
          note="recipe's grad clipping on"),
    Entry("ce_noprior_noclip", "CrossEntropy", bias_init="Zero", extra=NO_CLIP,
          paper_ap="diverges", note="no grad clipping"),
    Entry("flstar_g2_b1", "FocalLossStar", gamma=2, beta=1, alpha=0.25, paper_ap="33.8"),
    Entry("flstar_g4_b0", "FocalLossStar", gamma=4, beta=0, alpha=0.25, paper_ap="33.9"),
]
# The grid issue 17 asks for on the letters dataset: Table 1a, Table 1b (the paper's alpha per
# gamma), Table 3's two FL* settings, and CE without the prior (with the recipe's clipping).
LETTERS_GRID = [e for e in PAPER_GRID
                if e.name not in ("fl_g0_a0.75", "ce_noprior_noclip")]
GRIDS = {
    "paper": PAPER_GRID,
    "letters": LETTERS_GRID,
    "gamma": [Entry(f"fl_g{g:g}_a{a:.2f}", "FocalLoss", gamma=g, alpha=a)
              for g, a in ((0, 0.75), (0.5, 0.5), (1, 0.25), (2, 0.25), (5, 0.25))],
    "alpha": [Entry(f"ce_a{a:.2f}", "BalancedCrossEntropy", alpha=a)
              for a in (0.25, 0.5, 0.75, 0.9)],
    "star": [e for e in PAPER_GRID if e.loss == "FocalLossStar"]
    + [Entry("fl_g2_a0.25", "FocalLoss", gamma=2, alpha=0.25)],
}


def load_grid(spec: str) -> List[Entry]:
    """A built-in grid name, or a JSON file: a list of {"name", "loss", "gamma", "alpha",
    "beta", "bias_init", "extra": [cfg opts...], "paper_ap", "note"}."""
    if spec in GRIDS:
        return list(GRIDS[spec])
    if not os.path.isfile(spec):
        raise SystemExit(f"--grid {spec!r}: not a built-in grid ({sorted(GRIDS)}) "
                         "and not a JSON file")
    with open(spec) as f:
        rows = json.load(f)
    entries = []
    for i, row in enumerate(rows):
        try:
            entries.append(Entry(**{**row, "extra": tuple(row.get("extra", ()))}))
        except TypeError as e:
            raise SystemExit(f"--grid {spec}: entry {i} ({row}) is invalid: {e}") from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise SystemExit(f"--grid {spec}: run names must be unique, got {names}")
    return entries


def budget_opts(iters: int, eval_points: int = 1) -> List[str]:
    """The recipe's schedule shrunk to ``iters``: LR steps at 2/3 and 8/9 (the paper's 60k and
    80k of 90k), evaluation at ``eval_points`` evenly spaced iterations (the last one always),
    one checkpoint halfway (for resuming)."""
    if not 1 <= eval_points <= iters or iters % eval_points:
        raise SystemExit(f"--eval-points {eval_points} must divide --iters {iters}")
    steps = tuple(sorted({s for s in (round(iters * 2 / 3), round(iters * 8 / 9))
                          if 1 <= s < iters}))  # tiny budgets: fewer (or no) steps
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(min(100, max(1, iters // 5))),
            "SOLVER.CHECKPOINT_PERIOD", str(max(1, iters // 2)),
            "TEST.EVAL_PERIOD", str(iters // eval_points)]


_DIVERGED = re.compile(r"Loss became infinite or NaN at iteration=(\d+)")


def read_final_metrics(run_dir: str, eval_period: int = 1) -> Optional[Dict[str, float]]:
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        return None
    last, train, curve = None, None, {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            if "bbox/AP" in row:
                last = row
                # Periodic evaluations log iteration k*period - 1, the final one MAX_ITER; a
                # resumed run may evaluate an iteration twice (the last one counts).
                done = round((int(row["iteration"]) + 1) / eval_period) * eval_period
                curve[done] = float(row["bbox/AP"])
            if "loss_cls" in row:
                train = row
    if last is None:
        return None
    out = {m: float(last.get(f"bbox/{m}", float("nan"))) for m in METRICS}
    out["ap_curve"] = [[i, ap] for i, ap in sorted(curve.items())]  # [[iterations, AP], ...]
    if train is not None:
        out["final_loss_cls"] = float(train["loss_cls"])
        out["final_loss_box_reg"] = float(train.get("loss_box_reg", float("nan")))
    return out


def run_one(entry: Entry, seed: int, args, common: List[str]) -> dict:
    run_dir = os.path.join(args.output, entry.name, f"seed{seed}")
    result_path = os.path.join(run_dir, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    os.makedirs(run_dir, exist_ok=True)
    resume = os.path.exists(os.path.join(run_dir, "last_checkpoint"))
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", args.config_file,
           "--vis-images", "-1"]
    for spec in args.register_coco or ():
        cmd += ["--register-coco", *spec]
    if resume:
        cmd.append("--resume")
    cmd += common + entry.opts() + ["SEED", str(seed), "OUTPUT_DIR", run_dir] + list(args.opts)
    print(f"[ablate] {entry.name} seed {seed}{' (resuming)' if resume else ''}", flush=True)
    if args.dry_run:
        print("  " + " ".join(shlex.quote(c) for c in cmd))
        return {"name": entry.name, "seed": seed, "status": "dry-run"}
    log_path = os.path.join(run_dir, "run.log")
    start = time.time()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    with open(log_path) as f:
        text = f.read()
    result = {"name": entry.name, "seed": seed, "seconds": round(time.time() - start, 1),
              "command": " ".join(shlex.quote(c) for c in cmd)}
    diverged = _DIVERGED.search(text)
    if proc.returncode == 0:
        metrics = read_final_metrics(run_dir, args.iters // args.eval_points)
        if metrics is None:
            raise SystemExit(f"[ablate] {entry.name} seed {seed} finished but {run_dir}/"
                             "metrics.json has no bbox/AP (is DATASETS.TEST set?)")
        result.update(status="ok", **metrics)
    elif diverged:
        result.update(status="diverged", diverged_at=int(diverged.group(1)),
                      **{m: 0.0 for m in METRICS})
    else:
        tail = "\n".join(text.splitlines()[-25:])
        raise SystemExit(f"[ablate] {entry.name} seed {seed} failed (exit {proc.returncode}); "
                         f"log: {log_path}\n{tail}")
    if not args.keep_checkpoints:  # model_final.pth stays (tools/loss_distribution.py uses it)
        for fname in os.listdir(run_dir):
            if re.fullmatch(r"model_\d+\.pth", fname):
                os.remove(os.path.join(run_dir, fname))
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, result_path)
    status = (f"AP {result['AP']:.2f}" if result["status"] == "ok"
              else f"diverged at iteration {result['diverged_at']}")
    print(f"[ablate]   {status} ({result['seconds']:.0f} s)", flush=True)
    return result


def _coco_num_classes(json_file: str) -> int:
    with open(json_file) as f:
        return len(json.load(f)["categories"])


def get_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG,
                   help="base config of every run (default: the built-in shapes recipe)")
    p.add_argument("--grid", default="paper",
                   help=f"built-in grid {sorted(GRIDS)} or a JSON file (see load_grid)")
    p.add_argument("--only", nargs="+", default=None, help="run only these entries of the grid")
    p.add_argument("--iters", type=int, default=500, help="SOLVER.MAX_ITER of every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--eval-points", type=int, default=1,
                   help="evaluate every --iters/N iterations (AP against iterations: "
                        "ap_curve in each result and ablation_curves.png)")
    p.add_argument("--output", required=True, help="folder for runs, table and chart")
    p.add_argument("--register-coco", nargs=3, action="append",
                   metavar=("NAME", "JSON", "IMAGE_ROOT"), help="as in train_net.py")
    p.add_argument("--train", default=None, help="dataset name for DATASETS.TRAIN")
    p.add_argument("--test", default=None, help="dataset name for DATASETS.TEST")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep intermediate model_*.pth (model_final.pth is always kept)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="cfg options added to every run (after the grid's), KEY VALUE ...")
    return p


def main(argv=None) -> List[dict]:
    args = get_parser().parse_args(argv)
    if args.iters < 1:
        raise SystemExit(f"--iters must be >= 1, got {args.iters}")
    if len(args.opts) % 2:
        raise SystemExit(f"cfg options must be KEY VALUE pairs, got {args.opts}")
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"--config-file {args.config_file!r} does not exist")
    grid = load_grid(args.grid)
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

    common = budget_opts(args.iters, args.eval_points)
    if args.train:
        common += ["DATASETS.TRAIN", f"('{args.train}',)"]
        json_of = {n: j for n, j, _ in args.register_coco or ()}
        if args.train in json_of and "MODEL.RETINANET.NUM_CLASSES" not in args.opts:
            common += ["MODEL.RETINANET.NUM_CLASSES",
                       str(_coco_num_classes(json_of[args.train]))]
    if args.test:
        common += ["DATASETS.TEST", f"('{args.test}',)"]

    os.makedirs(args.output, exist_ok=True)
    results = [run_one(entry, seed, args, common) for seed in args.seeds for entry in grid]
    if args.dry_run:
        return results
    rows = summarize(grid, results)
    title = (f"{os.path.relpath(args.config_file, REPO)}, {args.iters} iterations, "
             f"seeds {args.seeds}")
    table = markdown_table(rows)
    command = "python tools/ablate.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    with open(os.path.join(args.output, "ablation.md"), "w") as f:
        f.write(f"# Loss ablation: {title}\n\nRegenerate: `{command}`\n\n{table}")
    with open(os.path.join(args.output, "ablation.json"), "w") as f:
        json.dump({"config": args.config_file, "iters": args.iters, "seeds": args.seeds,
                   "eval_points": args.eval_points,
                   "command": command, "rows": rows, "runs": results}, f, indent=1)
    plot(rows, os.path.join(args.output, "ablation.png"), title)
    if args.eval_points > 1:
        ce = best_of(rows, ("BalancedCrossEntropy", "CrossEntropy"))
        fl = [r for r in rows if r["name"] == "fl_g2_a0.25"] or [best_of(rows, ("FocalLoss",))]
        highlight = [r["name"] for r in (ce, fl[0]) if r]
        plot_curves(rows, os.path.join(args.output, "ablation_curves.png"),
                    title + f"; highlighted: best CE and FL γ 2 ({', '.join(highlight)})",
                    highlight)
    print(table)
    print(f"[ablate] table, JSON and chart in {args.output}/ablation.{{md,json,png}}")
    return results


if __name__ == "__main__":
    main()
