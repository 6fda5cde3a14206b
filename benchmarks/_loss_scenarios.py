"""Scenarios for bench_losses.py: the model's label path at COCO scale (op counts), a competing
CPU-bound process (contention), and LVIS-sized K = 1203 peak memory in fresh processes."""
import contextlib
import json
import os
import subprocess
import sys
from typing import List

import torch
import torch.nn.functional as F

# RetinaNet at 800x1344 (800x1333 padded to 32), strides 8..128, 9 anchors per location:
# 201,600 anchors per image over P3-P7, the paper's COCO setting.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_LEVELS = [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]
ANCHORS_PER_LOCATION = 9


def coco_level_logits(images=2, classes=80, seed=0, device="cpu",
                      levels=COCO_LEVELS) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(images, h * w * ANCHORS_PER_LOCATION, classes, generator=g) * 2 - 3)
            .to(device).requires_grad_() for h, w in levels]


def anchor_labels(rows, classes, generator, fg=0.003, ignored=0.015):
    """~0.3% foreground (a class), ~1.5% ignored (-1), the rest background (K)."""
    u = torch.rand(rows, generator=generator)
    labels = torch.where(u < fg, torch.randint(0, classes, (rows,), generator=generator),
                         torch.full((rows,), classes))
    labels[(u >= fg) & (u < fg + ignored)] = -1
    return labels


def coco_labels(images, classes, seed=1, device="cpu", levels=COCO_LEVELS) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = sum(h * w for h, w in levels) * ANCHORS_PER_LOCATION
    return [anchor_labels(rows, classes, g).to(device) for _ in range(images)]


def detectron2_cls_loss(pred_logits, gt_labels, alpha=0.25, gamma=2.0):
    """Detectron2's RetinaNet.losses, classification part (v0.6 and main alike)."""
    from fvcore.nn import sigmoid_focal_loss_jit

    num_classes = pred_logits[0].shape[-1]
    gt_labels = torch.stack(gt_labels)
    valid_mask = gt_labels >= 0
    target = F.one_hot(gt_labels[valid_mask], num_classes=num_classes + 1)[:, :-1]
    return sigmoid_focal_loss_jit(torch.cat(pred_logits, dim=1)[valid_mask],
                                  target.to(pred_logits[0].dtype), alpha=alpha, gamma=gamma,
                                  reduction="sum")


def focal_det_model(num_classes: int = 80):
    """A small FocalRetinaNet (the built-in R18 config, on CPU) whose ``classification_loss``
    the label-path benchmarks call: the model's own per-level loop, not a copy of it."""
    from detectron2.modeling import build_model

    from focal_det import cli

    cfg = cli.load_yaml_config(os.path.join(REPO, "configs", "builtin",
                                            "retinanet_R18_shapes.yaml"),
                               ["MODEL.RETINANET.NUM_CLASSES", str(num_classes)], device="cpu")
    return build_model(cfg)


@contextlib.contextmanager
def competing_process():
    """One CPU-bound process beside the benchmark, as a DataLoader worker would be."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def memory_child(name: str, rows: int, classes: int) -> None:
    """Print the peak extra memory of one forward+backward of ``name`` (run in a fresh process:
    logits and labels are made first, then the counter is reset)."""
    from benchmarks._common import peak_extra_bytes

    from focal_det.losses import FocalLoss

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(rows, classes, generator=g) * 2 - 3).requires_grad_()
    labels = anchor_labels(rows, classes, g)
    if name == "focal_det":
        fn = lambda: FocalLoss(gamma=2.0, alpha=0.25)(x, labels).backward()  # noqa: E731
    else:
        fn = lambda: detectron2_cls_loss([x[None]], [labels]).backward()  # noqa: E731
    fn()  # first call: allocator and one-time set-up outside the measurement
    x.grad = None
    peak = peak_extra_bytes(fn)
    print(json.dumps({"name": name, "rows": rows, "classes": classes, "peak_extra_bytes": peak,
                      "logits_bytes": x.numel() * 4}))


def memory_in_fresh_process(name: str, rows: int, classes: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_losses", "--memory-child",
                          name, str(rows), str(classes)], capture_output=True, text=True,
                         cwd=REPO, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"memory child {name} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])
