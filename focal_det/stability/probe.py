"""The detector side of the stability check: fixed training batches, the loss (whole, class or
box part) as a function of the parameters, the parameter groups, the optimizer's per-group LR
as a preconditioner, and short training runs on a copy of the model (the dry run, the LR range
test). Nothing here writes a file or touches the model it was given: everything runs on
``copy.deepcopy(model)``.
"""
import copy
import itertools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.engine import DefaultTrainer
from detectron2.utils.events import EventStorage

from ..lazy_run import LazyRunConfig

PARTS = ("total", "cls", "box")
# parameter group -> name prefixes (Detectron2's RetinaNet with an FPN backbone)
GROUPS = {
    "backbone": ("backbone.bottom_up.",),
    "fpn": ("backbone.",),  # after bottom_up
    "cls_subnet": ("head.cls_subnet.", "head.cls_score."),
    "box_subnet": ("head.bbox_subnet.", "head.bbox_pred."),
}


def group_of(name: str) -> Optional[str]:
    for group, prefixes in GROUPS.items():
        if name.startswith(prefixes):
            return group
    return None


def fixed_batches(loader, n: int) -> List[list]:
    """The first ``n`` batches of a training loader, kept (the same batches for every probe)."""
    batches = list(itertools.islice(iter(loader), n))
    if len(batches) < n:
        raise ValueError(f"the training loader gave {len(batches)} batches, {n} were asked for")
    return batches


def build_optimizer(cfg, model):
    """The config's optimizer, without focal_det's gradient-statistics file (nothing saved)."""
    if isinstance(cfg, LazyRunConfig):
        from ..engine import lazy
        return lazy.build_optimizer(cfg, model)
    return DefaultTrainer.build_optimizer(cfg, model)


def build_scheduler(cfg, optimizer):
    from ..engine.trainer import Trainer
    return Trainer.build_lr_scheduler(cfg, optimizer)


def optimizer_facts(cfg, model) -> Dict:
    """The config's optimizer for ``model``: per-parameter LR factors by parameter name (group
    LR over the base: the LR of the group holding the most parameters), the base LR, momentum,
    and whether it clips gradients."""
    model = copy.deepcopy(model)
    optimizer = build_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = optimizer.param_groups
    base = max(groups, key=lambda g: sum(p.numel() for p in g["params"]))
    base_lr = float(base.get("initial_lr", base["lr"]))
    factors = {names[id(p)]: float(g.get("initial_lr", g["lr"])) / base_lr
               for g in groups for p in g["params"]}
    clips = "clip" in type(optimizer).__name__.lower()  # Detectron2's *WithGradientClip*,
    # focal_det.solver.ClippedSGD
    return {"base_lr": base_lr, "momentum": float(base.get("momentum", 0.0)),
            "factors": factors, "clips": bool(clips), "type": type(optimizer).__name__}


def warmup_lrs(cfg, base_lr: float, max_iter: int) -> Tuple[float, float, int]:
    """(LR at iteration 0, LR at the end of the warm-up, the warm-up's length) as the config's
    scheduler gives them: the multiplier is followed until it first stops rising."""
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = build_scheduler(cfg, dummy)
    lrs = [dummy.param_groups[0]["lr"]]
    for _ in range(max_iter):
        dummy.step()
        sched.step()
        lrs.append(dummy.param_groups[0]["lr"])
        if lrs[-1] <= lrs[-2]:
            break
    end = len(lrs) - 2 if len(lrs) > 1 and lrs[-1] <= lrs[-2] else len(lrs) - 1
    return lrs[0], lrs[end], end


class DetectorLoss:
    """``loss(part)()``: the mean over fixed ``batches`` of the model's training loss ("total":
    every loss term, "cls": ``loss_cls``, "box": ``loss_box_reg``) with the loss normalizer held
    at its value for each batch at the probed point (a Hessian of a fixed function: the EMA
    normalizer would otherwise move with every call). ``model`` is changed (use a copy)."""

    def __init__(self, model, batches: Sequence[list]):
        self.model, self.batches = model, list(batches)
        model.train()
        self._index = 0
        self._cache: Dict[int, float] = {}
        if hasattr(type(model), "_normalizer"):  # FocalRetinaNet: one value per batch
            original = model._normalizer
            model._normalizer = lambda n: self._cache.setdefault(self._index, original(n))
        elif hasattr(model, "loss_normalizer_momentum"):  # Detectron2's RetinaNet: EMA frozen
            model.loss_normalizer_momentum = 1.0

    def losses(self, batch_index: int) -> Dict[str, torch.Tensor]:
        self._index = batch_index
        with EventStorage():
            return self.model(copy.deepcopy(self.batches[batch_index]))

    def loss(self, part: str = "total") -> Callable[[], torch.Tensor]:
        if part not in PARTS:
            raise ValueError(f"part={part!r} is not one of {list(PARTS)}")

        def fn() -> torch.Tensor:
            total = 0.0
            for i in range(len(self.batches)):
                d = self.losses(i)
                total = total + (sum(d.values()) if part == "total" else
                                 d["loss_cls" if part == "cls" else "loss_box_reg"])
            return total / len(self.batches)
        return fn


def params_of(model, group: Optional[str] = None) -> List[Tuple[str, torch.nn.Parameter]]:
    """The trainable parameters of ``group`` (None: all)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if group is None:
        return named
    if group not in GROUPS:
        raise ValueError(f"group={group!r} is not one of {list(GROUPS)}")
    return [(n, p) for n, p in named if group_of(n) == group]


def train_steps(model, optimizer, batches, *, scheduler=None,
                lr_at: Optional[Callable[[int], float]] = None,
                on_step: Optional[Callable[[int, float, Dict], bool]] = None) -> List[float]:
    """Train ``model`` on ``batches`` as Detectron2's SimpleTrainer does (sum of the losses,
    backward, step, scheduler step); ``lr_at(i)``: every group's LR at step i is this times its
    factor (the range test). ``on_step(i, loss, grads_by_name)`` after each backward; it may
    return True to stop. Returns the losses (a non-finite loss stops the run)."""
    model.train()
    factors = None
    if lr_at is not None:
        base = max(optimizer.param_groups, key=lambda g: sum(p.numel() for p in g["params"]))
        factors = [g["lr"] / base["lr"] for g in optimizer.param_groups]
    out = []
    for i, batch in enumerate(batches):
        if factors is not None:
            for g, f in zip(optimizer.param_groups, factors):
                g["lr"] = lr_at(i) * f
        with EventStorage(i):
            loss = sum(model(copy.deepcopy(batch)).values())
        value = float(loss.detach())
        out.append(value)
        if not torch.isfinite(loss):
            break
        optimizer.zero_grad()
        loss.backward()
        if on_step is not None and on_step(i, value, model):
            break
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return out
