"""Issue 37 (a), (b) and the free checks (docs/REPRODUCTION.md Section 7), measured with the
stability check's pieces (:mod:`focal_det.stability`):

- :func:`at_init`: λmax (whole loss, class and box parts, and per group where asked) of several
  losses at initialization, on the same fixed batches;
- :func:`trajectory`: a run of the config's first iterations (its optimizer and warm-up) with
  λmax on the fixed batches at chosen iterations, against 2(1 + β)/η_t, and the cosine between
  consecutive gradients of the FPN and of the class subnet at every iteration;
- :func:`channel_stats`: each P3-P7 channel's |mean|/RMS at initialization;
- :func:`normalization_check`: the detector's PIXEL_MEAN/PIXEL_STD against the ones the
  pretrained backbone was trained with (its checkpoint's ``focal_det_pretrain`` record).
"""
import copy
import math
from typing import Dict, List, Sequence

import torch

from ..stability import probe
from ..stability.check import _spectra
from ..stability.sharpness import cosine, lr_bound


def at_init(models: Dict[str, torch.nn.Module], cfgs: Dict[str, object], batches,
            *, groups_for: Sequence[str] = (), iters: int = 10, seed: int = 0) -> Dict:
    """λmax per loss name; ``groups_for``: the names that also get the per-group λmax."""
    out = {}
    for name, model in models.items():
        facts = probe.optimizer_facts(cfgs[name], model)
        groups = tuple(probe.GROUPS) if name in groups_for else ()
        spectra = _spectra(model, batches, facts, parts=probe.PARTS, groups=groups,
                           iters=iters, seed=seed, eps_rel=1e-3)
        out[name] = {"momentum": facts["momentum"], "base_lr": facts["base_lr"],
                     "spectra": spectra}
    return out


def _flat_grad(model, group: str) -> torch.Tensor:
    return torch.cat([p.grad.detach().reshape(-1).float() for _, p in
                      probe.params_of(model, group) if p.grad is not None])


def trajectory(model, cfg, stream: List[list], probe_batches, *, points: Sequence[int],
               iters: int = 10, seed: int = 0) -> Dict:
    """Train a copy of ``model`` on ``stream`` (the config's optimizer and LR schedule); before
    the step of each iteration in ``points``, λmax (whole loss and class part) on
    ``probe_batches``; every iteration the loss, the LR and the gradient cosines."""
    work = copy.deepcopy(model)
    facts = probe.optimizer_facts(cfg, work)
    optimizer = probe.build_optimizer(cfg, work)
    scheduler = probe.build_scheduler(cfg, optimizer)
    base_group = max(optimizer.param_groups, key=lambda g: sum(p.numel() for p in g["params"]))
    rows, lams, prev = [], [], {}

    def on_step(i, loss, m):
        lr = base_group["lr"]
        row = {"iteration": i, "loss": loss, "lr": lr}
        for group in ("fpn", "cls_subnet"):
            g = _flat_grad(m, group)
            row[f"grad_norm_{group}"] = float(g.norm())
            row[f"cos_{group}"] = cosine(prev[group], g) if group in prev else None
            prev[group] = g
        rows.append(row)
        if i in points:
            spectra = _spectra(m, probe_batches, facts, parts=("total", "cls"), groups=(),
                               iters=iters, seed=seed, eps_rel=1e-3)
            lam = spectra["total"]["lambda_max"]
            lams.append({"iteration": i, "lr": lr, "lambda_max": lam,
                         "lambda_max_cls": spectra["cls"]["lambda_max"],
                         "bound_at_lr": 2 * (1 + facts["momentum"]) / lr,
                         "eta_lambda": lr * lam, "spectra": spectra})
        return False

    losses = probe.train_steps(work, optimizer, stream, scheduler=scheduler, on_step=on_step)
    nan_at = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    return {"rows": rows, "lambda": lams, "momentum": facts["momentum"],
            "base_lr": facts["base_lr"], "nan_at": nan_at,
            "lr_bound_min": min((lr_bound(x["lambda_max"], facts["momentum"]) for x in lams),
                                default=None)}


@torch.no_grad()
def channel_stats(model, batch) -> Dict[str, dict]:
    """Per FPN level: each channel's |mean| / RMS over the batch and positions (the median and
    max over channels), at initialization, training mode."""
    model.train()
    images = model.preprocess_image(copy.deepcopy(batch))
    feats = model.backbone(images.tensor)
    out = {}
    for name in model.head_in_features:
        f = feats[name].float()
        mean = f.mean(dim=(0, 2, 3)).abs()
        rms = f.pow(2).mean(dim=(0, 2, 3)).sqrt().clamp_min(1e-12)
        r = mean / rms
        out[name] = {"median": float(r.median()), "max": float(r.max()),
                     "rms": float(f.pow(2).mean().sqrt())}
    return out


def normalization_check(cfg, weights_path: str) -> Dict:
    """Whether the detector normalizes its input as its pretrained backbone was trained."""
    from ..checkpoint import load_torch_safely
    if not weights_path:
        return {"detector": None, "pretraining": None, "equal": None,
                "note": "no MODEL.WEIGHTS: nothing pretrained to compare with"}
    meta = load_torch_safely(weights_path).get("focal_det_pretrain", {})
    pre = {k: meta.get("resnet", {}).get(k) for k in ("PIXEL_MEAN", "PIXEL_STD")}
    det = {"PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN), "PIXEL_STD": list(cfg.MODEL.PIXEL_STD)}
    return {"detector": det, "pretraining": pre, "meta_keys": sorted(meta),
            "equal": all(pre.get(k) is not None and [float(x) for x in pre[k]] ==
                         [float(x) for x in det[k]] for k in det)}
