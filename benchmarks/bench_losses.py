#!/usr/bin/env python
"""Focal-loss forward + backward: focal_det vs fvcore (jit and eager) vs torchvision, one process.

Input: RetinaNet-sized, 2 images x 120,000 anchors x 80 classes, fp32 (CPU; also CUDA when
available). Two paths are timed:

- "public": ``sigmoid_focal_loss(logits, float_targets, reduction="sum")`` against the same
  call in fvcore (eager and ``sigmoid_focal_loss_jit``, what Detectron2's RetinaNet calls) and
  torchvision;
- "model": what the detector does with integer anchor labels (-1 ignore, K background):
  focal_det's ``FocalLoss()(logits, labels)`` against Detectron2 v0.6's RetinaNet.losses code
  (valid mask, one-hot target, boolean gather, ``sigmoid_focal_loss_jit``).

Also the time of one copy of the logits (the memory-bandwidth floor) and the peak extra memory.
Prints JSON; asserts nothing about time. Usage: python benchmarks/bench_losses.py [--repeats N]
"""
import argparse
import json
import os
import platform
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved, peak_extra_bytes  # noqa: E402


def make_inputs(device, images=2, anchors=120_000, classes=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = images * anchors
    logits = (torch.randn(n, classes, generator=g) * 2 - 3).to(device)
    # ~0.3% foreground, 1.5% ignored, the rest background: RetinaNet-like.
    u = torch.rand(n, generator=g)
    labels = torch.where(u < 0.003, torch.randint(0, classes, (n,), generator=g),
                         torch.full((n,), classes))
    labels[(u >= 0.003) & (u < 0.018)] = -1
    labels = labels.to(device)
    targets = F.one_hot(labels.clamp_min(0), classes + 1)[:, :classes].float()
    return logits, labels, targets


def run(device, repeats):
    from fvcore.nn import sigmoid_focal_loss as fv_eager
    from fvcore.nn import sigmoid_focal_loss_jit as fv_jit
    from torchvision.ops import sigmoid_focal_loss as tv

    from focal_det.losses import FocalLoss, sigmoid_focal_loss

    logits, labels, targets = make_inputs(device)
    classes = logits.shape[1]
    x = logits.clone().requires_grad_()
    ours_model = FocalLoss(gamma=2.0, alpha=0.25)

    def step(loss_fn):
        def fn():
            loss = loss_fn()
            loss.backward()
            x.grad = None
        return fn

    def d2_model_path():  # detectron2 v0.6 RetinaNet.losses, classification part
        valid = labels >= 0
        target = F.one_hot(labels[valid], num_classes=classes + 1)[:, :-1]
        return fv_jit(x[valid], target.to(x.dtype), alpha=0.25, gamma=2.0, reduction="sum")

    public = {
        "focal_det": step(lambda: sigmoid_focal_loss(x, targets, gamma=2.0, alpha=0.25,
                                                     reduction="sum")),
        "fvcore_jit": step(lambda: fv_jit(x, targets, alpha=0.25, gamma=2.0, reduction="sum")),
        "fvcore_eager": step(lambda: fv_eager(x, targets, alpha=0.25, gamma=2.0,
                                              reduction="sum")),
        "torchvision": step(lambda: tv(x, targets, alpha=0.25, gamma=2.0, reduction="sum")),
    }
    model = {
        "focal_det": step(lambda: ours_model(x, labels)),
        "detectron2_retinanet": step(d2_model_path),
    }
    floor = {"copy_of_logits": lambda: logits.clone()}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    # Agreement first: a benchmark of wrong numbers is worthless.
    with torch.no_grad():
        ref = tv(logits.double(), targets.double(), reduction="sum").item()
        got = sigmoid_focal_loss(logits, targets, reduction="sum").item()
        got_model = ours_model(logits, labels).item()
        valid = labels >= 0
        ref_model = tv(logits[valid].double(), targets[valid].double(), reduction="sum").item()
    agreement = {"public_rel_err_vs_fp64": abs(got - ref) / ref,
                 "model_rel_err_vs_fp64": abs(got_model - ref_model) / ref_model}

    res_public = interleaved({**public, **floor}, repeats, sync=sync)
    res_model = interleaved(model, repeats, sync=sync)
    memory = {}
    for group, fns in (("public", public), ("model", model)):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn()
                memory[f"{group}/{name}"] = torch.cuda.max_memory_allocated() - base
            else:
                memory[f"{group}/{name}"] = peak_extra_bytes(fn)

    fastest_other = min(v["median_s"] for k, v in res_public.items()
                        if k not in ("focal_det", "copy_of_logits"))
    copy_s = res_public["copy_of_logits"]["median_s"]
    return {
        "device": device,
        "shape": list(logits.shape),
        "dtype": str(logits.dtype),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "agreement": agreement,
        "public_fwd_bwd": res_public,
        "model_fwd_bwd": res_model,
        "peak_extra_memory_bytes": memory,
        "ratios": {
            "public_speedup_vs_fastest_other": fastest_other / res_public["focal_det"]["median_s"],
            "model_speedup_vs_detectron2": res_model["detectron2_retinanet"]["median_s"]
            / res_model["focal_det"]["median_s"],
            "public_focal_det_over_copy_floor": res_public["focal_det"]["median_s"] / copy_s,
            "model_focal_det_over_copy_floor": res_model["focal_det"]["median_s"] / copy_s,
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    out = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
           "results": [run(d, args.repeats) for d in devices]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
