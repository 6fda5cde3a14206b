#!/usr/bin/env python
"""Detectron2's RetinaNet vs focal_det's FocalRetinaNet, same weights, inputs and threads.

R50-FPN, 80 classes, random init copied from one model into the other. Interleaved medians of:
a training step (forward, backward, SGD step) at batch 2, 640x640 on CPU (batch 8, 800x1333 on
GPU); inference latency per image at the same size; peak memory of a training step (RSS growth
on CPU, max_memory_allocated on GPU); and the phases inside a training step (backbone+FPN, head,
anchor labeling, losses, backward). Prints JSON. Asserts nothing about time; exits non-zero only
if the two models' losses or detections differ.

Usage: python benchmarks/bench_model.py [--repeats 3] [--device cpu|cuda]
"""
import argparse
import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import interleaved, peak_extra_bytes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_pair(device):
    from detectron2.modeling import build_model

    import focal_det

    cfg = focal_det.get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "retinanet_R50_FPN_1x.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    torch.manual_seed(0)
    ours = build_model(cfg)
    d2_cfg = cfg.clone()
    d2_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    theirs = build_model(d2_cfg)
    with torch.no_grad():  # random-init features are huge: tame the logits so that many
        theirs.head.cls_score.weight.normal_(0, 1e-9)  # anchors score above 0.05, distinct scores
        theirs.head.cls_score.bias.fill_(-2.0)
        theirs.head.bbox_pred.weight.normal_(0, 1e-9)  # boxes near their anchors, not off-image
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def make_batch(n, h, w, device, seed=0):
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        inst = Instances((h, w))
        xy = torch.rand(10, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(10, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, 80, (10,), generator=g)
        batch.append({"image": (torch.rand(3, h, w, generator=g) * 255).to(device),
                      "instances": inst.to(device)})
    return batch


def train_step(model, optimizer, batch):
    from detectron2.utils.events import EventStorage

    model.train()
    with EventStorage():
        losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return {k: v.item() for k, v in losses.items()}


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


def check_parity(ours, theirs, train_batch, infer_batch):
    ours_c, theirs_c = copy.deepcopy(ours), copy.deepcopy(theirs)
    l1 = train_step(ours_c, torch.optim.SGD(ours_c.parameters(), lr=0.0), train_batch)
    l2 = train_step(theirs_c, torch.optim.SGD(theirs_c.parameters(), lr=0.0), train_batch)
    ok = all(abs(l1[k] - l2[k]) <= 1e-5 * max(abs(l2[k]), 1e-12) for k in l2)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        a = ours(infer_batch)[0]["instances"]
        b = theirs(infer_batch)[0]["instances"]
    same = len(a) == len(b) and (len(a) == 0 or (
        torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-3, rtol=0)
        and torch.equal(a.pred_classes, b.pred_classes)))
    return {"losses_ours": l1, "losses_detectron2": l2, "losses_match": ok,
            "detections": len(a), "detections_match": bool(same)}


def run(device, repeats):
    if device == "cpu":
        n, h, w = 2, 640, 640
        sync = lambda: None  # noqa: E731
    else:
        n, h, w = 8, 800, 1333
        sync = torch.cuda.synchronize
    ours, theirs = build_pair(device)
    train_batch = make_batch(n, h, w, device)
    infer_batch = [{"image": b["image"]} for b in make_batch(1, h, w, device, seed=1)]
    parity = check_parity(ours, theirs, train_batch, infer_batch)

    opt = {m: torch.optim.SGD(m.parameters(), lr=1e-6, momentum=0.9) for m in (ours, theirs)}
    train = interleaved({
        "focal_det": lambda: train_step(ours, opt[ours], train_batch),
        "detectron2": lambda: train_step(theirs, opt[theirs], train_batch),
    }, repeats, sync=sync)

    def infer(model):
        model.eval()
        with torch.no_grad():
            model(infer_batch)

    inference = interleaved({"focal_det": lambda: infer(ours), "detectron2": lambda: infer(theirs)},
                            max(repeats, 5), sync=sync)
    phase = {"focal_det": [], "detectron2": []}
    for _ in range(repeats):
        phase["focal_det"].append(phases(ours, train_batch, sync))
        phase["detectron2"].append(phases(theirs, train_batch, sync))
    phase = {k: {p: sorted(r[p] for r in v)[len(v) // 2] for p in v[0]} for k, v in phase.items()}

    memory = {}
    for name, model in (("focal_det", ours), ("detectron2", theirs)):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            train_step(model, opt[model], train_batch)
            memory[name] = torch.cuda.max_memory_allocated() - base
        else:
            memory[name] = peak_extra_bytes(lambda: train_step(model, opt[model], train_batch))
    ratio = lambda d: d["focal_det"]["median_s"] / d["detectron2"]["median_s"]  # noqa: E731
    return {
        "device": device, "batch": n, "size": [h, w], "threads": torch.get_num_threads(),
        "repeats": repeats, "parity": parity,
        "train_step": train, "inference_per_image": inference,
        "train_phases_median_s": phase, "peak_train_memory_bytes": memory,
        "ratios_ours_over_detectron2": {
            "train_step": ratio(train), "inference": ratio(inference),
            "peak_train_memory": memory["focal_det"] / max(memory["detectron2"], 1),
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    results = [run(d, args.repeats) for d in devices]
    print(json.dumps({"torch": torch.__version__, "results": results}, indent=2))
    if not all(r["parity"]["losses_match"] and r["parity"]["detections_match"] for r in results):
        sys.exit("FocalRetinaNet and Detectron2's RetinaNet disagree (see parity above)")


if __name__ == "__main__":
    main()
