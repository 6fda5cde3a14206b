"""``python -m focal_det.stability`` and ``train_net.py --check-stability``: the stability check
(:mod:`.check`) on a config, its report, and the refusal.

    python -m focal_det.stability --config-file configs/builtin/retinanet_R18_letters_paper.yaml \\
        --json out.json MODEL.FOCAL_DET.CLS_LOSS.NAME BalancedCrossEntropy
"""
import argparse
import json
import math
import os
from typing import Dict, List, Optional

from detectron2.utils.env import seed_all_rng

from .. import cli
from ..errors import FocalDetError
from ..utils.files import atomic_write_text
from . import probe
from .check import run_check
from .verdict import VERDICT, verdict


class UnstableConfigError(FocalDetError):
    """The config's LR is above the stability bound by more than the allowed factor."""


# train_net.py --check-stability refuses a config whose base LR is above the verdict's
# predictor by more than this factor (only where a verdict is given: see .verdict).
REFUSE_FACTOR = 2.0


def add_check_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The check's knobs (``prefix`` "stability-" inside train_net.py's parser)."""
    p.add_argument(f"--{prefix}batches", type=int, default=1,
                   help="training batches the Hessian is taken on (default 1)")
    p.add_argument(f"--{prefix}lanczos-iters", type=int, default=8,
                   help="Lanczos iterations per lambda_max (2 gradients each; default 8)")
    p.add_argument(f"--{prefix}dry-run-iters", type=int, default=10,
                   help="the config's first iterations trained on a copy before lambda_max is "
                        "taken again (default 10)")
    p.add_argument(f"--{prefix}range-iters", type=int, default=100,
                   help="LR range test length (default 100; 0: no range test)")
    p.add_argument(f"--{prefix}no-groups", action="store_true",
                   help="skip the per-group lambda_max (backbone, FPN, class and box subnets)")


def check_options(args, prefix: str = "") -> Dict:
    """:func:`check_config`'s keywords from the flags of :func:`add_check_args`."""
    def get(name):
        return getattr(args, prefix + name)
    return {"batches": get("batches"), "lanczos_iters": get("lanczos_iters"),
            "dry_run_iters": get("dry_run_iters"), "range_iters": get("range_iters"),
            "groups": not get("no_groups")}


def get_parser():
    p = argparse.ArgumentParser(prog="python -m focal_det.stability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(p)
    cli.add_register_coco(p)
    add_check_args(p)
    p.add_argument("--json", default=None, metavar="PATH", help="write the numbers as JSON")
    return p


def check_config(cfg, *, batches: int = 1, lanczos_iters: int = 8, dry_run_iters: int = 10,
                 range_iters: int = 100, groups: bool = True) -> Dict:
    """The check on ``cfg`` (a ``CfgNode`` or a ``LazyRunConfig``): the model with its initial
    weights (``MODEL.WEIGHTS`` / ``train.init_checkpoint``), the config's train loader."""
    from ..checkpoint import FocalCheckpointer
    from ..engine.trainer import Trainer

    for name, value, low in (("batches", batches, 1), ("lanczos-iters", lanczos_iters, 1),
                             ("dry-run-iters", dry_run_iters, 0), ("range-iters", range_iters, 0)):
        if value < low:
            raise FocalDetError(f"--{name} (--stability-{name}) must be >= {low}, got {value}")
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else 0)  # the model's init, as train_net.py seeds it
    model = Trainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        FocalCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    loader = Trainer.build_train_loader(cfg)
    result = run_check(model, cfg, loader, batches=batches, lanczos_iters=lanczos_iters,
                       dry_run_iters=dry_run_iters, range_iters=range_iters,
                       groups=tuple(probe.GROUPS) if groups else (),
                       max_iter=cfg.SOLVER.MAX_ITER)
    result["verdict"] = verdict(result)
    return result


def _g(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def report(result: Dict) -> str:
    """The check as text: λmax per part and group, the bound, the range test, the verdict."""
    init, after = result["lambda_max"], result["lambda_max_after_dry_run"] or {}
    lines = [f"Stability check ({result['seconds']:.0f} s): optimizer {result['optimizer']}, "
             f"momentum {result['momentum']:g}, base LR {result['lr_base']:g}, warm-up "
             f"{result['lr_warmup_start']:.3g} -> {result['lr_warmup_end']:.3g} over "
             f"{result['warmup_iters']} iterations",
             f"{'':14s} {'lambda_max init':>16s} {'after dry run':>14s} {'LR bound':>10s}"]
    m = result["momentum"]
    for k in init:
        lam = max([x for x in (init.get(k), after.get(k)) if x is not None] or [float("nan")])
        bound = 2 * (1 + m) / lam if lam > 0 else float("inf")
        lines.append(f"{k:14s} {_g(init[k]):>16s} {_g(after.get(k)):>14s} {_g(bound):>10s}")
    dry = result["details"]["dry_run_losses"]
    if dry and not result["details"]["after_dry_run"]:
        lines.append(f"the dry run's loss was not finite at iteration {len(dry) - 1}: no "
                     "lambda_max after it")
    lines.append(f"LR bound 2(1 + momentum)/lambda_max (whole loss, the larger lambda_max): "
                 f"{_g(result['lr_bound'])}; the config's base LR is "
                 f"{_g(result['lr_base'])}")
    rt, ran = result["lr_range_test"], result["details"]["range_test"]
    lines.append("LR range test: " + (
        "not run" if ran is None else f"the loss diverged at LR {rt:.3g}" if rt is not None
        else f"the loss did not diverge up to LR {ran['lrs'][-1]:.3g}"))
    v = result["verdict"]
    lines.append(f"verdict: {v['label']} ({v['reason']})" if v else
                 f"verdict: none ({VERDICT['why_none']})")
    lines += [f"assumes: {a}" for a in result["assumptions"]]
    return "\n".join(lines)


def write_json(result: Dict, path: str) -> None:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(clean(result), indent=1))


def check_before_training(cfg, force: bool = False, **options) -> Dict:
    """``train_net.py --check-stability``: the check (``options``: :func:`check_config`'s
    keywords, from the ``--stability-*`` flags), printed; raises
    :class:`UnstableConfigError` when the verdict is above the bound by more than
    :data:`REFUSE_FACTOR` (``force``: warn and go on)."""
    result = check_config(cfg, **options)
    print(report(result), flush=True)
    v = result["verdict"]
    if v and v["label"] == "above the bound" and v["ratio"] > REFUSE_FACTOR:
        message = (f"the base LR is {v['ratio']:.1f}x the stability check's {v['predictor']} "
                   f"(more than {REFUSE_FACTOR:g}x): this config is expected to diverge; "
                   "lower the LR, or pass --ignore-stability to train anyway")
        if not force:
            raise UnstableConfigError(message)
        print(f"[stability] --ignore-stability: {message}", flush=True)
    return result


def main(argv: Optional[List[str]] = None) -> Dict:
    from ..data import prepare_datasets

    args = get_parser().parse_args(argv)
    cli.register_coco_datasets(args.register_coco)
    cfg = cli.load_run_config(args.config_file, args.opts)
    prepare_datasets(list(cfg.DATASETS.TRAIN))
    result = check_config(cfg, **check_options(args))
    print(report(result))
    if args.json:
        write_json(result, args.json)
        print(f"[stability] numbers in {args.json}")
    return result
