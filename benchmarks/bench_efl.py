#!/usr/bin/env python
"""Equalized Focal Loss against FL at LVIS's K = 1,203 classes: training step, classification
loss and peak memory (issue 38's goal: EFL within 10% of FL in step time and peak memory).

FocalRetinaNet R50-FPN (configs/retinanet_R50_FPN_1x.yaml, MODEL.RETINANET.NUM_CLASSES 1203),
the same weights under ``MODEL.FOCAL_DET.CLS_LOSS.NAME`` FocalLoss and EqualizedFocalLoss. EFL
starts from uneven statistics (g_j from about 0 to 1, as after some training), so every class
has its own focusing parameter and weight; its step includes the statistics' optimizer step
hook (``focal_det.engine.loss_state``). Interleaved medians, per round, of:

- ``train_step``: forward, backward, SGD step at batch 2, 640x640 (``--size``);
- ``cls_loss``: the classification loss alone (every level's K = 1,203 logits of one batch,
  forward and backward, and for EFL the statistics' normalization and step): the part EFL
  changes, without the network around it;
- ``peak_train_memory``: the peak growth over two training steps (RSS in a fresh process per
  loss on CPU; ``max_memory_allocated`` on CUDA).

Each ratio is EFL / FL; ``--rounds`` rounds (default 3), each a whole interleaved measurement;
the JSON keeps every round, each ratio's median, min and max and whether the goal (<= 1.10)
holds in every round, the median only, or none. Asserts nothing about time.

Usage: python -m benchmarks.bench_efl [--rounds 3] [--repeats 3] [--device cpu|cuda]
       [--size 2 640 640] [--amp] [--output DIR]   (also writes DIR/bench_efl_<device>.{json,md})
"""
import argparse
import json
import os
import sys

import torch

from benchmarks._common import (Goal, add_rounds_arg, emit, environment, interleaved,
                                markdown_ratios, peak_extra_bytes, run_rounds)
from benchmarks._model_setup import make_batch, train_step
from focal_det import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 1203
LOSSES = ("FocalLoss", "EqualizedFocalLoss")
GOALS = tuple(Goal(r, "<=", 1.10, "issue 38") for r in ("train_step", "peak_train_memory"))


def build(name, device):
    """FocalRetinaNet R50-FPN at K = 1203 with the loss ``name``; weights from seed 0 (the same
    for both losses); EFL with uneven statistics; an SGD optimizer with the step hook."""
    from detectron2.modeling import build_model

    from focal_det.engine import loss_state

    cfg = cli.load_yaml_config(
        os.path.join(REPO, "configs/retinanet_R50_FPN_1x.yaml"),
        ["MODEL.WEIGHTS", "", "MODEL.RETINANET.NUM_CLASSES", str(K),
         "MODEL.FOCAL_DET.CLS_LOSS.NAME", name], device=device, freeze=False)
    torch.manual_seed(0)
    model = build_model(cfg)
    if name == "EqualizedFocalLoss":
        g = torch.Generator().manual_seed(1)
        efl = model.cls_loss
        efl.pos_grad.copy_(torch.rand(K, generator=g))
        efl.neg_grad.copy_(torch.rand(K, generator=g) * 2)
        efl.after_step()  # nothing pending: recomputes g, gamma_j and the weights
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    loss_state.install(optimizer, model)
    return model, optimizer


def batch_for(size, device, seed=0):
    n, h, w = size
    batch = make_batch(n, h, w, device, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for x in batch:  # classes from all of LVIS's K
        x["instances"].gt_classes = torch.randint(0, K, (len(x["instances"]),), generator=g).to(
            device)
    return batch


def loss_inputs(model, batch):
    """One training forward's per-level logits (detached) and labels."""
    from detectron2.utils.events import EventStorage

    seen = []
    original = model.classification_loss
    model.classification_loss = lambda levels, labels: seen.append((levels, labels)) or \
        original(levels, labels)
    model.train()
    with EventStorage(), torch.no_grad():
        model(batch)
    del model.classification_loss
    levels, labels = seen[0]
    return [x.detach().clone() for x in levels], labels


def cls_loss_step(model, levels, labels, normalizer=100.0):
    xs = [x.requires_grad_() for x in levels]
    loss = model.classification_loss(xs, labels) / normalizer
    model.cls_loss.observe_normalizer(normalizer, 1)
    loss.backward()
    model.cls_loss.after_step()
    for x in xs:
        x.grad = None


def one_round(args):
    device, dtype = args.device, torch.bfloat16 if args.amp else None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    models = {name: build(name, device) for name in LOSSES}
    models["EqualizedFocalLoss"][0].load_state_dict(models["FocalLoss"][0].state_dict(),
                                                    strict=False)
    batch = batch_for(args.size, device)
    inputs = {name: loss_inputs(m, batch) for name, (m, _) in models.items()}
    steps = interleaved({name: (lambda m=m, o=o: train_step(m, o, batch, dtype))
                         for name, (m, o) in models.items()}, args.repeats, sync=sync)
    losses = interleaved({name: (lambda m=models[name][0], x=inputs[name]: cls_loss_step(
        m, *x)) for name in LOSSES}, args.repeats, sync=sync)
    del models, inputs
    memory = {name: peak_memory(name, args) for name in LOSSES}
    detail = {"train_step": steps, "cls_loss": losses, "peak_train_memory_bytes": memory}
    efl, fl = LOSSES[1], LOSSES[0]
    ratios = {"train_step": steps[efl]["median_s"] / steps[fl]["median_s"],
              "cls_loss": losses[efl]["median_s"] / losses[fl]["median_s"],
              "peak_train_memory": memory[efl] / max(memory[fl], 1)}
    return detail, ratios


def peak_memory(name, args):
    """Peak growth (bytes) over two training steps of a fresh model with the loss ``name``."""
    if args.device == "cuda":
        model, optimizer = build(name, "cuda")
        batch = batch_for(args.size, "cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            train_step(model, optimizer, batch, torch.bfloat16 if args.amp else None)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    import subprocess

    cmd = [sys.executable, "-m", "benchmarks.bench_efl", "--memory-worker", name, "--size",
           *map(str, args.size), *(["--amp"] if args.amp else [])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO,
                         timeout=3600).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_extra_bytes"]


def memory_worker(name, args):
    """In a fresh process (CPU): the peak RSS growth over two training steps."""
    model, optimizer = build(name, "cpu")
    batch = batch_for(args.size, "cpu")
    dtype = torch.bfloat16 if args.amp else None
    extra = peak_extra_bytes(lambda: [train_step(model, optimizer, batch, dtype)
                                      for _ in range(2)])
    print(json.dumps({"peak_extra_bytes": extra}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats a round")
    add_rounds_arg(parser)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", type=int, nargs=3, default=[2, 640, 640],
                        metavar=("BATCH", "H", "W"), help="batch and image size")
    parser.add_argument("--amp", action="store_true",
                        help="forward under bf16 autocast (as SOLVER.AMP.ENABLED on the CPU)")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    cli.add_output(parser, what="bench_efl_<device>.{json,md} (the JSON also goes to stdout)")
    args = parser.parse_args(argv)
    if args.memory_worker:
        return memory_worker(args.memory_worker, args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    out = {"run": environment(), "k": K, "size": args.size, "amp_bf16": args.amp,
           "command": cli.regenerate_command(["-m", "benchmarks.bench_efl"], argv)}
    out["result"] = run_rounds(lambda: one_round(args), args.rounds, GOALS, "bench_efl")
    emit(out, args.output, f"bench_efl_{args.device}.json",
         markdown_ratios(out["result"], f"bench_efl, {args.device}, EFL / FL at K = {K}",
                         out["run"], out["command"]))
    return out


if __name__ == "__main__":
    cli.run_tool(main, "bench_efl.py")
