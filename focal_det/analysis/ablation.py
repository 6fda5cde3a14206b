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
from typing import Dict, List, Optional

from ..utils.files import atomic_write_text
from ..utils.metrics import read_metrics
from .ablation_report import METRICS
from .divergence import explosion, loss_curve



__all__ = ["GRIDS", "KEY", "LETTERS_GRID", "NO_CLIP", "OHEM_GRID", "PAPER_GRID", "AblationError",
           "Entry", "load_grid", "budget_opts", "warmup_opts", "read_final_metrics", "run_one",
           "coco_num_classes"]

from .grids import (  # noqa: E402  (re-exported: tools and tests use them here)
    GRIDS, KEY, LETTERS_GRID, NO_CLIP, OHEM_GRID, PAPER_GRID, AblationError, Entry, load_grid,
)
from . import mechanism_grid  # noqa: E402,F401  (adds letters_paper_mechanism to GRIDS)


def budget_opts(iters: int, eval_points: int = 1, scaled_warmup: bool = False) -> List[str]:
    """The recipe's schedule shrunk to ``iters``: LR steps at 2/3 and 8/9 (the paper's 60k and
    80k of 90k), evaluation at ``eval_points`` evenly spaced iterations (the last one always),
    one checkpoint halfway (for resuming). The warm-up is min(100, iters / 5) iterations, or
    with ``scaled_warmup`` left to :func:`warmup_opts` (the config's share of its schedule)."""
    if not 1 <= eval_points <= iters or iters % eval_points:
        raise AblationError(f"--eval-points {eval_points} must divide --iters {iters}")
    steps = tuple(sorted({s for s in (round(iters * 2 / 3), round(iters * 8 / 9))
                          if 1 <= s < iters}))  # tiny budgets: fewer (or no) steps
    warmup = [] if scaled_warmup else ["SOLVER.WARMUP_ITERS", str(min(100, max(1, iters // 5)))]
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps), *warmup,
            "SOLVER.CHECKPOINT_PERIOD", str(max(1, iters // 2)),
            "TEST.EVAL_PERIOD", str(iters // eval_points)]


def warmup_opts(entry, iters: int, config_warmup: int, config_max_iter: int) -> List[str]:
    """``--warmup scaled``: the config's warm-up as the same share of ``iters`` as of its own
    MAX_ITER (the paper: 500 of 90k), times the entry's ``warmup_scale``; at least 1."""
    n = max(1, round(config_warmup * iters / config_max_iter * entry.warmup_scale))
    return ["SOLVER.WARMUP_ITERS", str(n)]


_DIVERGED = re.compile(r"Loss became infinite or NaN at iteration=(\d+)")


def read_final_metrics(run_dir: str, eval_period: int = 1) -> Optional[Dict[str, float]]:
    last, train, curve = None, None, {}
    for row in read_metrics(run_dir):
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
    if getattr(args, "warmup", "fixed") == "scaled":
        common = common + warmup_opts(entry, args.iters, *args.config_warmup)
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
    result["loss_curve"] = loss_curve(run_dir)
    result["explosion"] = explosion(result["loss_curve"])
    if result["status"] == "ok" and result["explosion"] and not result["explosion"]["recovered"]:
        result["status"] = "exploded"  # finished, AP kept, but the loss never came back
    if not args.keep_checkpoints:  # model_final.pth stays (tools/loss_distribution.py uses it)
        for fname in os.listdir(run_dir):
            if re.fullmatch(r"model_\d+\.pth", fname):
                os.remove(os.path.join(run_dir, fname))
    atomic_write_text(result_path, json.dumps(result, indent=1))
    status = {"ok": lambda r: f"AP {r['AP']:.2f}",
              "exploded": lambda r: f"AP {r['AP']:.2f}, loss exploded at iteration "
                                    f"{r['explosion']['iteration']} and never recovered",
              "diverged": lambda r: f"diverged at iteration {r['diverged_at']}"}[
        result["status"]](result)
    print(f"[ablate]   {status} ({result['seconds']:.0f} s)", flush=True)
    return result


def coco_num_classes(json_file: str) -> int:
    with open(json_file) as f:
        return len(json.load(f)["categories"])
