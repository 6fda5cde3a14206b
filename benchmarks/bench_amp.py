#!/usr/bin/env python
"""Mixed precision on the CPU: FocalRetinaNet under bf16 autocast vs FocalRetinaNet in fp32 vs
Detectron2's RetinaNet in fp32 (Detectron2 cannot autocast on the CPU: its AMPTrainer asserts
CUDA), same weights, inputs and threads, side by side in one run.

R50-FPN, 80 classes, batch 2 at 640x640 (``--size``). Interleaved medians of a training step
(forward under autocast as ``focal_det.engine.amp`` runs it, backward, SGD step) and of
inference per image with sparse and dense scores (``benchmarks/_model_setup.py``), measured
idle and again with one competing process burning a core; the peak RSS growth of two training
steps in a fresh process per variant; and the dispatched ops and host syncs per training step
and per inference call under autocast (casts are ops on a GPU too). Prints JSON, ratios over
Detectron2's fp32. All of it but the op counts runs ``--rounds`` times (default 3), each round
a whole measurement; the JSON keeps every round (``per_round``), each ratio's median, min and
max (``ratios``) and, against issue 29's goals, whether a claim holds for every round, the
median only, or none (``claims``). Asserts nothing about time; exits non-zero only if the bf16
detections are far from the fp32 ones in a round (a broken autocast path, not a slow one).

Usage: python -m benchmarks.bench_amp [--rounds 3] [--repeats 5] [--size 2 640 640]
       [--output DIR]
"""
import argparse
import copy
import json
import multiprocessing
import sys

import torch

from benchmarks._common import (Goal, add_rounds_arg, emit, environment, interleaved,
    markdown_ratios, peak_extra_bytes, run_rounds)
from benchmarks._model_setup import (
    REPO,
    SCORE_SCENARIOS,
    build_pair,
    detect,
    make_batch,
    set_scores,
    train_step,
)
from focal_det import cli

VARIANTS = ("focal_det_bf16", "focal_det_fp32", "detectron2_fp32")
# Issue 29's goals on this CPU: bf16 train step and sparse inference each <= 0.55x Detectron2's
# fp32; memory no worse than our fp32 (bf16 memory / Detectron2's <= fp32 memory / Detectron2's:
# ``bf16_over_fp32_memory`` <= 1).
GOALS = (Goal("idle/train_step/focal_det_bf16", "<=", 0.55, "issue 29"),
         Goal("idle/inference_sparse/focal_det_bf16", "<=", 0.55, "issue 29"),
         Goal("peak_train_memory/bf16_over_fp32", "<=", 1.0, "issue 29"))


def _models(n, h, w):
    ours, theirs = build_pair("cpu")
    bf16 = copy.deepcopy(ours)
    bf16.inference_precision = "bfloat16"
    models = {"focal_det_bf16": bf16, "focal_det_fp32": ours, "detectron2_fp32": theirs}
    infer = [{"image": b["image"]} for b in make_batch(1, h, w, "cpu", seed=1)]
    torch.manual_seed(0)  # set_scores draws the class conv: the same scores on every run
    set_scores(list(models.values()), infer[0]["image"], "sparse")
    return models, make_batch(n, h, w, "cpu"), infer


def _step_fn(name, model, optimizer, batch):
    dtype = torch.bfloat16 if name == "focal_det_bf16" else None  # FocalAMPTrainer's step
    return lambda: train_step(model, optimizer, batch, forward_dtype=dtype)


def _burn():  # the competing process: one core, busy
    x = 0
    while True:
        x += 1


def timings(models, batch, infer, repeats):
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-6, momentum=0.9) for k, m in models.items()}
    initial = copy.deepcopy(models["detectron2_fp32"].state_dict())
    train = interleaved({k: _step_fn(k, m, opts[k], batch) for k, m in models.items()}, repeats)
    for m in models.values():
        m.load_state_dict(initial, strict=True)
    inference, agreement = {}, {}
    for scenario in SCORE_SCENARIOS:
        set_scores(list(models.values()), infer[0]["image"], scenario)
        ref, low = detect(models["focal_det_fp32"], infer), detect(models["focal_det_bf16"], infer)
        agreement[scenario] = _agreement(ref, low)
        inference[scenario] = interleaved(
            {k: (lambda m=m: detect(m, infer)) for k, m in models.items()}, max(repeats, 5))
    return {"train_step": train, "inference_per_image": inference,
            "bf16_vs_fp32_detections": agreement}


def _agreement(ref, low):
    """How close the bf16 detections are to the fp32 ones: counts and the top-100 scores."""
    k = min(len(ref), len(low), 100)
    diff = (ref.scores[:k] - low.scores[:k]).abs().max().item() if k else 0.0
    return {"fp32": len(ref), "bf16": len(low), "top100_max_score_diff": diff}


def op_counts(models, batch, infer):
    """Per training step and per inference call with sparse scores, as bench_model counts."""
    from focal_det.utils.op_count import count_ops

    res = {}  # the scores are _models' (sparse), drawn once from a fixed seed
    for name, model in models.items():
        # The inference count runs on the weights set_scores gave (restored after the two
        # training steps), so how many scores pass the threshold, and with it the count, does
        # not depend on what the steps learned: the same numbers on every run.
        weights = copy.deepcopy(model.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
        step = _step_fn(name, model, opt, batch)
        step()
        res[name] = {"train_step": count_ops(step).as_dict()}
        model.load_state_dict(weights)
        detect(model, infer)
        res[name]["inference"] = count_ops(lambda: detect(model, infer)).as_dict()
    return res


def memory_worker(name, size):
    n, h, w = size
    models, batch, _ = _models(n, h, w)
    model = models.pop(name)
    del models
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    step = _step_fn(name, model, opt, batch)
    print(json.dumps({"peak_extra_bytes": peak_extra_bytes(lambda: [step(), step()])}))


def memory(size):
    import subprocess

    out = {}
    for name in VARIANTS:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_amp", "--memory-worker",
                               name, "--size", *map(str, size)], check=True,
                              capture_output=True, text=True, cwd=REPO, timeout=3600)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_bytes"]
    return out


def ratios(result, mem):
    def r(d, name):
        return d[name]["median_s"] / d["detectron2_fp32"]["median_s"]

    out = {}
    for load in ("idle", "one_competing_process"):
        t = result[load]
        for name in ("focal_det_bf16", "focal_det_fp32"):
            out[f"{load}/train_step/{name}"] = r(t["train_step"], name)
            for scenario, d in t["inference_per_image"].items():
                out[f"{load}/inference_{scenario}/{name}"] = r(d, name)
    for name in ("focal_det_bf16", "focal_det_fp32"):
        out[f"peak_train_memory/{name}"] = mem[name] / max(mem["detectron2_fp32"], 1)
    out["peak_train_memory/bf16_over_fp32"] = mem["focal_det_bf16"] / max(mem["focal_det_fp32"], 1)
    return out


def one_round(size, repeats):
    """One whole measurement, as one run measured before rounds: fresh models, interleaved
    timings idle and with a competing process, peak memory in fresh processes."""
    n, h, w = size
    models, batch, infer = _models(n, h, w)
    result = {"idle": timings(models, batch, infer, repeats)}
    burner = multiprocessing.get_context("spawn").Process(target=_burn, daemon=True)
    burner.start()
    try:
        result["one_competing_process"] = timings(models, batch, infer, repeats)
    finally:
        burner.terminate()
        burner.join()
    result["peak_train_memory_bytes"] = mem = memory(size)
    result["ratios_over_detectron2_fp32"] = ratios(result, mem)
    return result, result["ratios_over_detectron2_fp32"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats a round")
    add_rounds_arg(parser)
    parser.add_argument("--size", type=int, nargs=3, default=[2, 640, 640],
                        metavar=("BATCH", "H", "W"))
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    cli.add_output(parser, what="bench_amp_cpu.{json,md} (the JSON also goes to stdout)")
    args = parser.parse_args(argv)
    if args.memory_worker:
        return memory_worker(args.memory_worker, tuple(args.size))
    from focal_det.precision import cpu_has_bf16

    n, h, w = args.size
    result = {"run": environment(), "torch": torch.__version__,
              "threads": torch.get_num_threads(),
              "cpu_has_bf16": cpu_has_bf16(), "batch": n, "size": [h, w],
              "repeats": args.repeats,
              "command": cli.regenerate_command(["-m", "benchmarks.bench_amp"], argv)}
    result.update(run_rounds(lambda: one_round(args.size, args.repeats), args.rounds, GOALS,
                             "bench_amp"))
    result["op_counts"] = op_counts(*_models(n, h, w))
    emit(result, args.output, "bench_amp_cpu.json",
         markdown_ratios(result, "bench_amp, CPU, over Detectron2's fp32", result["run"],
                         result["command"]))
    far = [r["idle"]["bf16_vs_fp32_detections"]["sparse"] for r in result["per_round"]
           if r["idle"]["bf16_vs_fp32_detections"]["sparse"]["top100_max_score_diff"] > 0.1]
    if far:
        sys.exit(f"bf16 detections far from fp32 ones: {far[0]}")
    return result


if __name__ == "__main__":
    cli.run_tool(main, "bench_amp.py")
