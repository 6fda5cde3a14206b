"""Training and evaluation from a LazyConfig ``.py`` config (Detectron2's Python configs).

The config defines ``model``, ``dataloader.{train,test,evaluator}``, ``optimizer``,
``lr_multiplier`` and ``train`` as Detectron2's ``configs/common`` do (see ``configs/lazy/``).
The loop is Detectron2's ``tools/lazyconfig_train_net.py`` with focal_det's checkpointer (atomic
saves, code-free loading, refuses weights for another class count at evaluation).
"""
import logging
from typing import List

import detectron2.utils.comm as comm
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format

from ..checkpoint import FocalCheckpointer
from ..utils.ddp import cpu_ddp_support
from . import preemption

logger = logging.getLogger("focal_det")


def output_dir(cfg) -> str:
    return cfg.train.output_dir


def _names(node) -> List[str]:
    names = node.dataset.names
    return [names] if isinstance(names, str) else list(names)


def dataset_names(cfg, train: bool = True) -> List[str]:
    """The datasets a run of this config reads: the test set, and the training set if
    ``train``."""
    names = _names(cfg.dataloader.test) if "test" in cfg.dataloader else []
    if train and "train" in cfg.dataloader:
        names = _names(cfg.dataloader.train) + names
    return names


def build_model(cfg):
    model = instantiate(cfg.model)
    return model.to(cfg.train.device)


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    if preemption.requested():
        raise preemption.Preempted()
    ret = inference_on_dataset(model, preemption.StopOnSignal(instantiate(cfg.dataloader.test)),
                               instantiate(cfg.dataloader.evaluator))
    print_csv_format(ret)
    return ret


def _ddp(model, cfg):
    from detectron2.engine.defaults import create_ddp_model

    ddp = dict(cfg.train.get("ddp", {}))
    with cpu_ddp_support():
        return create_ddp_model(model, **ddp)


def do_train(cfg, args):
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = _ddp(model, cfg)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer)
    checkpointer = FocalCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    results = {}

    def evaluate():
        results.clear()
        results.update(do_test(cfg, model))
        return results

    stop = preemption.PreemptionHook()
    trainer.register_hooks([
        stop.marker,
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period)
        if comm.is_main_process() else None,
        stop,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except preemption.Preempted:
        preemption.save_and_exit(checkpointer, cfg.train.output_dir, start_iter, stop)
    return dict(results)  # the last evaluation's (EvalHook evaluates after the last iteration)


def main(cfg, args):
    if args.eval_only:
        model = build_model(cfg)
        FocalCheckpointer(model, cfg.train.output_dir, require_same_classes=True).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume)
        return do_test(cfg, model)
    return do_train(cfg, args)
