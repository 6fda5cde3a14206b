#!/usr/bin/env python
"""Detectron2's RetinaNet vs focal_det's FocalRetinaNet, same weights, inputs and threads.

R50-FPN, 80 classes, random init copied from one model into the other. Interleaved medians of:
a training step (forward, backward, SGD step) at batch 2, 640x640 on CPU (batch 8, 800x1333 on
GPU); inference latency per image at the same size, with "dense" scores (every anchor above the
0.05 threshold) and "sparse" ones (~1%, like a trained model); peak memory of two training
steps (RSS growth in a fresh process per model on CPU, max_memory_allocated on GPU), then on
CPU the step time of each model alone in that process; and the
phases inside a training step (backbone+FPN, head, anchor labeling, losses, backward).
FocalRetinaNet runs with its default switches and, as a variant, with
MODEL.FOCAL_DET.CHANNELS_LAST off; torchvision's
retinanet_resnet50_fpn (random init, not the same weights) is timed alongside as a reference.
Also, device independent (counted on CPU at COCO scale: batch 2, 800x1333, sparse scores):
top-level dispatched ops and host-device synchronizations (``.item()``, ``.tolist()``,
``nonzero``, boolean indexing; see ``focal_det.utils.op_count``) per training step and per
inference call, ours vs Detectron2 (``op_counts``; ``--only-op-counts`` runs just that).
All of it (but the op counts, which do not vary) runs ``--rounds`` times (default 3), each
round a whole interleaved measurement; the JSON keeps every round (``per_round``), each ratio's
median, min and max over the rounds (``ratios``) and, against issue 7's goals, whether a claim
holds for every round, the median only, or none (``claims``).
Prints JSON. Asserts nothing about time; exits non-zero only if the models' losses or
detections differ in any round.

Usage: python -m benchmarks.bench_model [--rounds 3] [--repeats 3] [--device cpu|cuda]
       [--only-op-counts] [--output DIR]   (also writes DIR/bench_model_<devices>.{json,md})
"""
import argparse
import copy
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch

from benchmarks._common import (Goal, add_rounds_arg, emit, environment, interleaved,
    markdown_ratios, peak_extra_bytes, run_rounds)
from benchmarks._model_setup import (
    SCORE_SCENARIOS,
    build_pair,
    check_losses,
    detect,
    make_batch,
    same_detections,
    set_scores,
    torchvision_retinanet,
    train_step,
)
from focal_det import cli

# Issue 7's goals, ours / Detectron2's: training step <= 0.85, inference <= 0.8 (with identical
# detections), peak training memory <= 0.8.
GOALS = (Goal("train_step", "<=", 0.85, "issue 7"),
         Goal("inference_sparse", "<=", 0.8, "issue 7"),
         Goal("inference_dense", "<=", 0.8, "issue 7"),
         Goal("peak_train_memory", "<=", 0.8, "issue 7"))


def phases(model, batch, sync):
    """Seconds spent in each part of one training step (forward parts, then backward)."""
    from detectron2.utils.events import EventStorage

    model.train()
    t = [time.perf_counter()]

    def mark():
        sync()
        t.append(time.perf_counter())

    with EventStorage():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        mark()
        predictions = model.head(features)
        logits, deltas = model._transpose_dense_predictions(predictions, [model.num_classes, 4])
        mark()
        anchors = model.anchor_generator(features)
        gt_labels, gt_boxes = model.label_anchors(anchors, [b["instances"] for b in batch])
        mark()
        losses = model.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        mark()
    sum(losses.values()).backward()
    mark()
    model.zero_grad(set_to_none=True)
    names = ["backbone_fpn", "head", "anchor_labeling", "losses", "backward"]
    return {n: t[i + 1] - t[i] for i, n in enumerate(names)}


def run(device, repeats, with_torchvision=True, cpu_size=(2, 640, 640)):
    if device == "cpu":
        n, h, w = cpu_size
        sync = lambda: None  # noqa: E731
    else:
        n, h, w = 8, 800, 1333
        sync = torch.cuda.synchronize
    ours, theirs = build_pair(device)
    models = {"focal_det": ours, "detectron2": theirs}
    variant, _ = build_pair(device, CHANNELS_LAST=False)
    if hasattr(variant, "channels_last"):  # this version has the switch (default on)
        models["focal_det_channels_first"] = variant
    train_batch = make_batch(n, h, w, device)
    infer_batch = [{"image": b["image"]} for b in make_batch(1, h, w, device, seed=1)]
    set_scores(list(models.values()), infer_batch[0]["image"], "sparse")
    for m in models.values():
        if m is not theirs:
            m.load_state_dict(theirs.state_dict(), strict=True)
    parity = check_losses(ours, theirs, train_batch)
    initial = copy.deepcopy(theirs.state_dict())

    opt = {k: torch.optim.SGD(m.parameters(), lr=1e-6, momentum=0.9) for k, m in models.items()}
    fns = {k: (lambda k=k, m=m: train_step(m, opt[k], train_batch)) for k, m in models.items()}
    if with_torchvision:
        tv_step, tv_infer = torchvision_retinanet(device, n, h, w)
        fns["torchvision"] = tv_step
    train = interleaved(fns, repeats, sync=sync)

    inference = {}
    for m in models.values():  # training steps rounded differently: same weights again
        m.load_state_dict(initial, strict=True)
    for scenario in SCORE_SCENARIOS:
        set_scores(list(models.values()), infer_batch[0]["image"], scenario)
        ref = detect(theirs, infer_batch)
        parity[f"detections_{scenario}"] = len(ref)
        parity[f"detections_match_{scenario}"] = all(
            same_detections(detect(m, infer_batch), ref) for m in models.values())
        fns = {k: (lambda m=m: detect(m, infer_batch)) for k, m in models.items()}
        if with_torchvision:
            fns["torchvision"] = tv_infer
        inference[scenario] = interleaved(fns, max(repeats, 5), sync=sync)

    phase = {"focal_det": [], "detectron2": []}
    for _ in range(repeats):
        phase["focal_det"].append(phases(ours, train_batch, sync))
        phase["detectron2"].append(phases(theirs, train_batch, sync))
    phase = {k: {p: sorted(r[p] for r in v)[len(v) // 2] for p in v[0]} for k, v in phase.items()}

    memory, alone = {}, {}
    for name, model in models.items():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            train_step(model, opt[name], train_batch)
            memory[name] = torch.cuda.max_memory_allocated() - base
        else:  # a fresh process per model: RSS is not shared with the others' freed memory
            memory[name], alone[name] = memory_in_subprocess(name, (n, h, w))

    def ratio(d, ours="focal_det", key="median_s"):
        return d[ours][key] / d["detectron2"][key] if ours in d else None

    ratios = {"train_step": ratio(train),
              "train_step_channels_first": ratio(train, "focal_det_channels_first"),
              # computation only: kernel time (page faults) excluded
              "train_step_user_cpu": ratio(train, key="median_user_cpu_s")}
    for scenario, d in inference.items():
        ratios[f"inference_{scenario}"] = ratio(d)
        ratios[f"inference_{scenario}_channels_first"] = ratio(d, "focal_det_channels_first")
        ratios[f"inference_{scenario}_user_cpu"] = ratio(d, key="median_user_cpu_s")
    if alone:  # each model alone in a fresh process (not interleaved: noisier)
        ratios["train_step_alone"] = ratio(alone)
    ratios["peak_train_memory"] = memory["focal_det"] / max(memory["detectron2"], 1)
    if "focal_det_channels_first" in memory:
        ratios["peak_train_memory_channels_first"] = (
            memory["focal_det_channels_first"] / max(memory["detectron2"], 1))
    return {
        "device": device, "batch": n, "size": [h, w], "threads": torch.get_num_threads(),
        "repeats": repeats, "parity": parity, "train_step": train,
        "train_step_alone_in_fresh_process": alone,
        "inference_per_image": inference, "train_phases_median_s": phase,
        "peak_train_memory_bytes": memory, "ratios_ours_over_detectron2": ratios,
    }


def one_round(device, args):
    """One interleaved measurement (:func:`run`): its result and its ratios."""
    detail = run(device, args.repeats, not args.no_torchvision, tuple(args.cpu_size))
    return detail, detail["ratios_ours_over_detectron2"]


def op_counts(n=2, h=800, w=1333):
    """Dispatched ops and host syncs per training step and per inference call (one image,
    sparse scores), ours vs Detectron2, same weights; counted on CPU (device independent)."""
    from focal_det.utils.op_count import count_ops

    ours, theirs = build_pair("cpu")
    batch = make_batch(n, h, w, "cpu")
    infer = [{"image": b["image"]} for b in make_batch(1, h, w, "cpu", seed=1)]
    set_scores([ours, theirs], infer[0]["image"], "sparse")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    res = {"batch": n, "size": [h, w]}
    for name, model in (("focal_det", ours), ("detectron2", theirs)):
        opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
        train_step(model, opt, batch)  # warm-up outside the count
        res[name] = {"train_step": count_ops(lambda: train_step(model, opt, batch)).as_dict()}
        # The first inference after the weights changed re-folds FrozenBN into the convs
        # (FOLD_NORMS, once per weight change); every later call is the steady state.
        res[name]["inference_first_after_weight_update"] = count_ops(
            lambda: detect(model, infer)).as_dict()
        res[name]["inference"] = count_ops(lambda: detect(model, infer)).as_dict()
    res["ours_over_detectron2"] = {
        f"{phase}_{what}": res["focal_det"][phase][what] / max(res["detectron2"][phase][what], 1)
        for phase in ("train_step", "inference") for what in ("ops", "syncs")}
    return res


def memory_worker(name, cpu_size):
    """In a fresh process: build the model, then report the peak RSS growth over two training
    steps (allocator caches included: what the machine has to provide)."""
    n, h, w = cpu_size
    keys = {"CHANNELS_LAST": False} if name == "focal_det_channels_first" else {}
    ours, theirs = build_pair("cpu", **keys)
    model = theirs if name == "detectron2" else ours
    batch = make_batch(n, h, w, "cpu")
    set_scores([model], make_batch(1, h, w, "cpu", seed=1)[0]["image"], "sparse")
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    del ours, theirs
    extra = peak_extra_bytes(lambda: [train_step(model, opt, batch) for _ in range(2)])
    # Then the step time of this model alone in its process, as a user's training runs it
    # (the interleaved timing shares one allocator between all models).
    alone = interleaved({name: lambda: train_step(model, opt, batch)}, 3, warmup=0)[name]
    print(json.dumps({"peak_extra_bytes": extra, "train_step_alone": alone}))


def memory_in_subprocess(name, cpu_size):
    """(peak RSS growth in bytes, timing of 3 more steps) of ``name`` in a fresh process."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_model", "--memory-worker",
                          name, "--cpu-size", *map(str, cpu_size)], check=True,
                         capture_output=True, text=True, cwd=REPO, timeout=3600).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["peak_extra_bytes"], result["train_step_alone"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats a round")
    add_rounds_arg(parser)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--no-torchvision", action="store_true",
                        help="skip torchvision's retinanet_resnet50_fpn reference")
    parser.add_argument("--cpu-size", type=int, nargs=3, default=[2, 640, 640],
                        metavar=("BATCH", "H", "W"), help="CPU batch and image size")
    parser.add_argument("--op-count-size", type=int, nargs=3, default=[2, 800, 1333],
                        metavar=("BATCH", "H", "W"),
                        help="batch and image size of the op and sync counts (default COCO "
                             "scale; smaller only to check the JSON's shape)")
    parser.add_argument("--only-op-counts", action="store_true",
                        help="only the op and sync counts (no timing)")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    cli.add_output(parser, what="bench_model_<devices>.{json,md} (the JSON also goes to stdout)")
    args = parser.parse_args(argv)
    if args.memory_worker:
        return memory_worker(args.memory_worker, tuple(args.cpu_size))
    counts = op_counts(*args.op_count_size)
    out = {"run": environment(), "torch": torch.__version__, "op_counts": counts,
           "command": cli.regenerate_command(["-m", "benchmarks.bench_model"], argv)}
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    results = []
    if not args.only_op_counts:
        results = out["results"] = [
            {"device": d, **run_rounds(lambda d=d: one_round(d, args), args.rounds, GOALS,
                                       f"bench_model {d}")} for d in devices]
    name = "op_counts" if args.only_op_counts else "_".join(devices)
    emit(out, args.output, f"bench_model_{name}.json", "\n".join(
        markdown_ratios(r, f"bench_model, {r['device']}, ours / Detectron2", out["run"],
                        out["command"]) for r in results))
    if not all(v for r in results for detail in r["per_round"]
               for k, v in detail["parity"].items()
               if k == "losses_match" or k.startswith("detections_match")):
        sys.exit("FocalRetinaNet and Detectron2's RetinaNet disagree (see parity above)")
    return out


if __name__ == "__main__":
    cli.run_tool(main, "bench_model.py")
