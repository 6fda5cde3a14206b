"""The stability check (issue 37): before a config trains, how sharp is its loss, what LR does
that allow, and where does an LR range test see the loss blow up.

Two measurements on a few training batches of the config's own data, as the config trains (its
optimizer, per-group LRs, momentum and warm-up), on copies of the model (nothing is saved):

1. λmax of the Hessian (:mod:`.sharpness`) of the whole loss, of ``loss_cls`` and
   ``loss_box_reg`` alone, and of the whole loss restricted to each parameter group (backbone,
   FPN, class subnet, box subnet), at initialization and again after a dry run of the config's
   first ``dry_run_iters`` iterations (sharpness can grow fast early: Section 7 of
   docs/REPRODUCTION.md). The LR bound is 2(1 + β)/λmax, the largest base LR at which SGD with
   the config's momentum β is stable along the sharpest direction (per-group LR factors, e.g.
   Detectron's 2x for biases, are in λmax as a preconditioner).
2. An LR range test (Smith 2017; fastai's ``lr_find``): from the config's initial weights, the LR
   raised exponentially from ``range_start`` to ``range_end`` times the config's base LR over
   ``range_iters`` iterations, reporting the first LR at which the loss is not finite or exceeds
   ``range_factor`` times its running minimum.

What it assumes: SGD-like dynamics (the bound is SGD with momentum's; other optimizers get the
measurements, the bound is marked as assuming SGD); gradient clipping (when the optimizer clips)
and normalization layers in the head change the picture: a clipped step cannot grow without
bound, so the bound can be pessimistic; the check says so in ``assumptions``. The dry run and the
range test run in float32 whatever the config's AMP setting.
"""
import copy
import math
import time
from typing import Dict, Optional, Sequence

import torch

from . import probe
from .sharpness import lambda_max, lr_bound

JSON_KEYS = ("lambda_max", "lambda_max_after_dry_run", "lr_bound", "lr_range_test", "lr_base",
             "lr_warmup_start", "lr_warmup_end", "momentum", "verdict")


def _spectra(model, batches, facts, *, parts: Sequence[str], groups: Sequence[str],
             iters: int, seed: int, eps_rel: float) -> Dict[str, dict]:
    """λmax per part (all parameters) and per group (whole loss), on a copy of ``model``."""
    work = copy.deepcopy(model)
    loss = probe.DetectorLoss(work, batches)
    out = {}
    jobs = [(p, None) for p in parts] + [("total", g) for g in groups]
    for part, group in jobs:
        named = probe.params_of(work, group)
        if not named:
            out[group] = None  # e.g. a frozen backbone: nothing to probe
            continue
        params = [p for _, p in named]
        # only the probed parameters need gradients (a head group skips the backbone's backward)
        wanted = {id(p) for p in params}
        saved = [(p, p.requires_grad) for p in work.parameters()]
        for p, _ in saved:
            p.requires_grad_(id(p) in wanted)
        try:
            scales = [math.sqrt(facts["factors"].get(n, 1.0)) for n, _ in named]
            spec = lambda_max(loss.loss(part), params, scales=scales, iters=iters, seed=seed,
                              eps_rel=eps_rel)
        finally:
            for p, flag in saved:
                p.requires_grad_(flag)
        out[group or part] = {**spec.as_dict(), "lr_bound": lr_bound(spec.top, facts["momentum"])}
    return out


def range_test(model, cfg, batches, base_lr: float, *, start: float = 0.01, end: float = 100.0,
               factor: float = 4.0) -> Dict:
    """The LR range test on a copy of ``model``: one batch per iteration, the LR at step i
    base_lr · start · (end/start)^(i/(n-1)), every group at its factor. Returns every LR and
    loss, and ``diverged_lr`` (None if the loss stayed finite and under ``factor`` x its running
    minimum)."""
    work = copy.deepcopy(model)
    optimizer = probe.build_optimizer(cfg, work)
    n = len(batches)

    def lr_at(i):
        return base_lr * start * (end / start) ** (i / max(n - 1, 1))

    losses = probe.train_steps(work, optimizer, batches, lr_at=lr_at)
    diverged, best = None, float("inf")
    for i, value in enumerate(losses):
        if not math.isfinite(value) or value > factor * best:
            diverged = lr_at(i)
            break
        best = min(best, value)
    return {"lrs": [lr_at(i) for i in range(len(losses))], "losses": losses,
            "diverged_lr": diverged, "factor": factor, "start": start, "end": end}


def run_check(model, cfg, loader, *, batches: int = 1, lanczos_iters: int = 8,
              dry_run_iters: int = 10, range_iters: int = 100, range_start: float = 0.01,
              range_end: float = 100.0, range_factor: float = 4.0, seed: int = 0,
              eps_rel: float = 1e-3, groups: Sequence[str] = tuple(probe.GROUPS),
              parts: Sequence[str] = probe.PARTS, max_iter: Optional[int] = None) -> Dict:
    """Every measurement of the check, as a JSON-ready dict (keys :data:`JSON_KEYS` and more).
    ``model``: built with its initial weights loaded; ``loader``: the config's train loader."""
    t0 = time.perf_counter()
    facts = probe.optimizer_facts(cfg, model)
    start_lr, end_lr, warmup = probe.warmup_lrs(cfg, facts["base_lr"], max_iter or 10 ** 6)
    need = max(batches, dry_run_iters, range_iters)
    stream = probe.fixed_batches(loader, need)
    probes = stream[:batches]
    kw = dict(parts=parts, groups=groups, iters=lanczos_iters, seed=seed, eps_rel=eps_rel)
    init = _spectra(model, probes, facts, **kw)

    dry_losses, after, rt = [], None, None
    if dry_run_iters:  # the config's first iterations: its optimizer and warm-up
        dry = copy.deepcopy(model)
        optimizer = probe.build_optimizer(cfg, dry)
        dry_losses = probe.train_steps(dry, optimizer, stream[:dry_run_iters],
                                       scheduler=probe.build_scheduler(cfg, optimizer))
        if all(map(math.isfinite, dry_losses)):
            after = _spectra(dry, probes, facts, **kw)
    if range_iters:
        rt = range_test(model, cfg, stream[:range_iters], facts["base_lr"], start=range_start,
                        end=range_end, factor=range_factor)
    lams = [s["lambda_max"] for s in (init.get("total"), (after or {}).get("total")) if s]
    lam = max(lams) if lams else float("nan")
    assumptions = ["the bound is SGD with momentum's: 2(1 + momentum) / lambda_max"]
    if facts["clips"]:
        assumptions.append("the optimizer clips gradients: a clipped step cannot run away, so "
                           "the bound may be pessimistic")
    if facts["momentum"] == 0 and "SGD" not in facts["type"]:
        assumptions.append(f"optimizer {facts['type']}: the SGD bound may not apply")
    return {
        "lambda_max": {k: (v["lambda_max"] if v else None) for k, v in init.items()},
        "lambda_max_after_dry_run": ({k: (v["lambda_max"] if v else None)
                                      for k, v in after.items()} if after else None),
        "lr_bound": lr_bound(lam, facts["momentum"]) if lams else None,
        "lr_range_test": rt["diverged_lr"] if rt else None,
        "lr_base": facts["base_lr"], "lr_warmup_start": start_lr, "lr_warmup_end": end_lr,
        "warmup_iters": warmup, "momentum": facts["momentum"], "optimizer": facts["type"],
        "verdict": None,
        "details": {"init": init, "after_dry_run": after, "dry_run_losses": dry_losses,
                    "range_test": rt, "batches": batches, "lanczos_iters": lanczos_iters,
                    "dry_run_iters": dry_run_iters, "eps_rel": eps_rel},
        "assumptions": assumptions,
        "seconds": round(time.perf_counter() - t0, 1),
    }
