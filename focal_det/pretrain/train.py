"""Pretrain Detectron2's ResNet bottom-up as an image classifier: deterministic (every batch is
a function of the seed and the iteration), resumable to the same weights, a progress line, and
held-out top-1.

The network is exactly the detector's bottom-up (``build_resnet_backbone`` from the detection
config's ``MODEL.RESNETS``, trainable BN instead of the config's norm, all stages trained), with
global average pooling and a linear classifier on its last stage. Inputs are BGR and normalized
with the detection config's ``PIXEL_MEAN``/``PIXEL_STD``, as the detector will see them.

Optimization: SGD with momentum, linear warm-up, cosine decay to zero, weight decay, cross
entropy. :class:`Settings`' defaults are the recipe of the paper-faithful backbone
(``make pretrain``, ``tools/reproduce_paper.sh`` and the docs run the tool without repeating
them). A signal (``preemption.DEFAULT_SIGNALS``) stops at the end of the iteration with a
checkpoint and exit code ``preemption.EXIT_PREEMPTED``; ``--resume`` continues exactly.
"""
import itertools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List

import numpy as np
import torch
from torch import nn

from ..engine import preemption
from ..errors import FocalDetError
from ..utils.files import atomic_write, atomic_write_text

logger = logging.getLogger("focal_det.pretrain")
CHECKPOINT = "pretrain_last.pth"


class PretrainError(FocalDetError, ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    """The training recipe; the defaults are the paper-faithful backbone's (docs/REPRODUCTION.md,
    Section 6), and the tool's flags default to them."""
    iters: int = 3000
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    seed: int = 0
    log_period: int = 50
    eval_period: int = 500
    checkpoint_period: int = 100

    def lr_at(self, it: int) -> float:
        if it < self.warmup_iters:
            return self.lr * (0.1 + 0.9 * it / self.warmup_iters)
        t = (it - self.warmup_iters) / max(1, self.iters - self.warmup_iters)
        return self.lr * 0.5 * (1 + math.cos(math.pi * t))


def backbone_cfg(det_cfg):
    """The detection config's ResNet, with trainable BN and every stage up to res5."""
    cfg = det_cfg.clone()
    cfg.defrost()
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.freeze()
    return cfg


class Classifier(nn.Module):
    """``bottom_up`` (Detectron2's ResNet, the detector's parameter names) + pool + linear."""

    def __init__(self, cfg, num_classes: int):
        super().__init__()
        from detectron2.layers import ShapeSpec
        from detectron2.modeling.backbone.resnet import build_resnet_backbone

        self.bottom_up = build_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        channels = self.bottom_up.output_shape()["res5"].channels
        self.fc = nn.Linear(channels, num_classes)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = (images_uint8.float() - self.pixel_mean) / self.pixel_std
        return self.fc(self.bottom_up(x)["res5"].mean((2, 3)))


def _to_tensor(images: List[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def evaluate(model: Classifier, source, batch_size: int = 256) -> float:
    """Held-out top-1 accuracy in percent (BN in eval mode)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    items = iter(source.val_items())
    with torch.no_grad():
        while True:
            batch = list(itertools.islice(items, batch_size))
            if not batch:
                break
            pred = model(_to_tensor([img for img, _ in batch])).argmax(1)
            correct += int((pred == torch.tensor([label for _, label in batch])).sum())
            total += len(batch)
    model.train(was_training)
    return 100.0 * correct / max(1, total)


def _checkpoint_meta(source, settings: Settings, cfg) -> dict:
    return {"source": source.describe(), "settings": asdict(settings),
            "resnet": {"DEPTH": cfg.MODEL.RESNETS.DEPTH,
                       "RES2_OUT_CHANNELS": cfg.MODEL.RESNETS.RES2_OUT_CHANNELS,
                       "PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN),
                       "PIXEL_STD": list(cfg.MODEL.PIXEL_STD)}}


def train(source, det_cfg, settings: Settings, output: str, resume: bool = False,
          progress: Callable[[str], None] = print) -> Dict:
    """Train, checkpoint into ``output``, return the report (also ``output/pretrain.json``)."""
    cfg = backbone_cfg(det_cfg)
    meta = _checkpoint_meta(source, settings, cfg)
    os.makedirs(output, exist_ok=True)
    ckpt_path = os.path.join(output, CHECKPOINT)
    torch.manual_seed(settings.seed)
    model = Classifier(cfg, source.num_classes)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    start, history, seconds = 0, [], 0.0
    if os.path.exists(ckpt_path):
        if not resume:
            raise PretrainError(f"{ckpt_path} exists: pass --resume to continue that run, or "
                                "choose another --output")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["meta"] != json.loads(json.dumps(meta)):
            raise PretrainError(f"{ckpt_path} was made with other settings: "
                                f"{_diff(state['meta'], meta)}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history, seconds = state["iteration"], state["history"], state["seconds"]
        progress(f"[pretrain] resuming at iteration {start}/{settings.iters}")

    def save(iteration: int, spent: float):
        data = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "iteration": iteration, "history": history, "seconds": spent, "meta": meta}
        atomic_write(ckpt_path, lambda f: torch.save(data, f))

    loss_fn = nn.CrossEntropyLoss()
    t0, window = time.perf_counter(), []
    it = start
    with preemption.handling():
        while it < settings.iters:
            first = it * settings.batch_size
            batch = [source.train_item(first + j, settings.seed)
                     for j in range(settings.batch_size)]
            images = _to_tensor([b[0] for b in batch])
            labels = torch.tensor([b[1] for b in batch])
            lr = settings.lr_at(it)
            for group in opt.param_groups:
                group["lr"] = lr
            logits = model(images)
            loss = loss_fn(logits, labels)
            if not torch.isfinite(loss):
                raise PretrainError(f"loss became {loss.item()} at iteration {it}; lower --lr "
                                    f"(now {settings.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
            window.append((loss.item(), (logits.argmax(1) == labels).float().mean().item()))
            spent = seconds + time.perf_counter() - t0
            if it % settings.log_period == 0 or it == settings.iters:
                rate = spent / max(1, it - start) if start else spent / it
                eta = (settings.iters - it) * (time.perf_counter() - t0) / (it - start)
                progress(f"[pretrain] iter {it}/{settings.iters}  loss "
                         f"{np.mean([w[0] for w in window]):.3f}  train top-1 "
                         f"{100 * np.mean([w[1] for w in window]):.1f}%  lr {lr:.4f}  "
                         f"{rate:.2f} s/it  eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
                window = []
            if it % settings.eval_period == 0 or it == settings.iters:
                top1 = evaluate(model, source)
                history.append({"iteration": it, "val_top1": top1})
                progress(f"[pretrain] iter {it}: held-out top-1 {top1:.2f}%")
            if it % settings.checkpoint_period == 0 or it == settings.iters:
                save(it, seconds + time.perf_counter() - t0)
            if preemption.requested(share=False):
                save(it, seconds + time.perf_counter() - t0)
                progress(f"[pretrain] stopped by {preemption.STATE.signal_name} after iteration"
                         f" {it}; --resume continues")
                raise SystemExit(preemption.EXIT_PREEMPTED)
    report = {"meta": meta, "history": history, "val_top1": history[-1]["val_top1"],
              "num_classes": source.num_classes, "iterations": settings.iters,
              "train_seconds": round(seconds + time.perf_counter() - t0, 1)}
    atomic_write_text(os.path.join(output, "pretrain.json"), json.dumps(report, indent=1))
    return {"report": report, "model": model}


def _diff(old: dict, new: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), json.loads(json.dumps(new.get(k)))
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _diff(a, b, f"{prefix}{k}.")
            out += [sub] if sub else []
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r}, now {b!r}")
    return "; ".join(out)


def load_classifier(det_cfg, output: str, num_classes: int) -> Classifier:
    state = torch.load(os.path.join(output, CHECKPOINT), map_location="cpu", weights_only=True)
    model = Classifier(backbone_cfg(det_cfg), num_classes)
    model.load_state_dict(state["model"])
    return model
