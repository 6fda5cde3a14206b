"""Classification-loss ablation grids (``tools/ablate.py``): the grid entries, the shrunken
schedule, one training run per (entry, seed) as a child ``python -m focal_det.engine`` process
(resumed when interrupted, never repeated when finished, NaN/inf recorded as diverged), and
reading its metrics back. Tables and charts: ``ablation_report.py``."""
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ..errors import FocalDetError
from ..utils.files import atomic_write_text
from .ablation_report import METRICS



class AblationError(FocalDetError, ValueError):
    """A grid, budget or run that cannot go on; the message names it."""


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
# The paper's Table 1d arms (OHEM with CE on the chosen anchors; R-101 in the paper) beside
# FL gamma 2: minibatch per image, NMS threshold, and the SSD-style 1:3 ratio.
_OHEM = "MODEL.FOCAL_DET.SAMPLER."


def _ohem(batch: int, nms: float, fraction: float = -1.0, paper_ap=None) -> Entry:
    name = f"ohem{'_1to3' if fraction > 0 else ''}_{batch}_nms{nms:g}"
    return Entry(name, "CrossEntropy", paper_ap=paper_ap, note="OHEM (Table 1d)",
                 extra=(_OHEM + "NAME", "OHEM", _OHEM + "OHEM.BATCH_SIZE_PER_IMAGE", str(batch),
                        _OHEM + "OHEM.NMS_THRESH", str(nms),
                        _OHEM + "OHEM.POSITIVE_FRACTION", str(fraction)))


OHEM_GRID = [_ohem(128, 0.5, paper_ap="32.8 (R-101)"), _ohem(512, 0.5), _ohem(128, 0.7),
             _ohem(128, 0.5, 0.25), Entry("fl_g2_a0.25", "FocalLoss", gamma=2, alpha=0.25,
                                          paper_ap="36.0 (R-101)")]

GRIDS = {
    "paper": PAPER_GRID,
    "letters": LETTERS_GRID,
    "gamma": [Entry(f"fl_g{g:g}_a{a:.2f}", "FocalLoss", gamma=g, alpha=a)
              for g, a in ((0, 0.75), (0.5, 0.5), (1, 0.25), (2, 0.25), (5, 0.25))],
    "alpha": [Entry(f"ce_a{a:.2f}", "BalancedCrossEntropy", alpha=a)
              for a in (0.25, 0.5, 0.75, 0.9)],
    "ohem": OHEM_GRID,
    "star": [e for e in PAPER_GRID if e.loss == "FocalLossStar"]
    + [Entry("fl_g2_a0.25", "FocalLoss", gamma=2, alpha=0.25)],
}


def load_grid(spec: str) -> List[Entry]:
    """A built-in grid name, or a JSON file: a list of {"name", "loss", "gamma", "alpha",
    "beta", "bias_init", "extra": [cfg opts...], "paper_ap", "note"}."""
    if spec in GRIDS:
        return list(GRIDS[spec])
    if not os.path.isfile(spec):
        raise AblationError(f"--grid {spec!r}: not a built-in grid ({sorted(GRIDS)}) "
                         "and not a JSON file")
    with open(spec) as f:
        rows = json.load(f)
    entries = []
    for i, row in enumerate(rows):
        try:
            entries.append(Entry(**{**row, "extra": tuple(row.get("extra", ()))}))
        except TypeError as e:
            raise AblationError(f"--grid {spec}: entry {i} ({row}) is invalid: {e}") from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise AblationError(f"--grid {spec}: run names must be unique, got {names}")
    return entries


def budget_opts(iters: int, eval_points: int = 1) -> List[str]:
    """The recipe's schedule shrunk to ``iters``: LR steps at 2/3 and 8/9 (the paper's 60k and
    80k of 90k), evaluation at ``eval_points`` evenly spaced iterations (the last one always),
    one checkpoint halfway (for resuming)."""
    if not 1 <= eval_points <= iters or iters % eval_points:
        raise AblationError(f"--eval-points {eval_points} must divide --iters {iters}")
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
    cmd = [sys.executable, "-m", "focal_det.engine", "--config-file", args.config_file,
           "--vis-images", "-1"]
    for spec in args.register_coco or ():
        cmd += ["--register-coco", *spec]
    if resume:
        cmd.append("--resume")
    cmd += common + entry.opts() + ["SEED", str(seed), "OUTPUT_DIR", run_dir] + list(args.opts)
    print(f"[ablate] {entry.name} seed {seed}{' (resuming)' if resume else ''}", flush=True)
    if args.dry_run:
        print("  " + shlex.join(cmd))
        return {"name": entry.name, "seed": seed, "status": "dry-run"}
    log_path = os.path.join(run_dir, "run.log")
    start = time.time()
    with open(log_path, "a") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    with open(log_path) as f:
        text = f.read()
    result = {"name": entry.name, "seed": seed, "seconds": round(time.time() - start, 1),
              "command": shlex.join(cmd)}
    diverged = _DIVERGED.search(text)
    if proc.returncode == 0:
        metrics = read_final_metrics(run_dir, args.iters // args.eval_points)
        if metrics is None:
            raise AblationError(f"[ablate] {entry.name} seed {seed} finished but {run_dir}/"
                             "metrics.json has no bbox/AP (is DATASETS.TEST set?)")
        result.update(status="ok", **metrics)
    elif diverged:
        result.update(status="diverged", diverged_at=int(diverged.group(1)),
                      **{m: 0.0 for m in METRICS})
    else:
        tail = "\n".join(text.splitlines()[-25:])
        raise AblationError(f"[ablate] {entry.name} seed {seed} failed (exit {proc.returncode}); "
                         f"log: {log_path}\n{tail}")
    if not args.keep_checkpoints:  # model_final.pth stays (tools/loss_distribution.py uses it)
        for fname in os.listdir(run_dir):
            if re.fullmatch(r"model_\d+\.pth", fname):
                os.remove(os.path.join(run_dir, fname))
    atomic_write_text(result_path, json.dumps(result, indent=1))
    status = (f"AP {result['AP']:.2f}" if result["status"] == "ok"
              else f"diverged at iteration {result['diverged_at']}")
    print(f"[ablate]   {status} ({result['seconds']:.0f} s)", flush=True)
    return result


def coco_num_classes(json_file: str) -> int:
    with open(json_file) as f:
        return len(json.load(f)["categories"])
