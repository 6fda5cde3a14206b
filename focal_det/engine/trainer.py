"""focal_det's trainer: Detectron2's ``DefaultTrainer`` with safe, atomic checkpoints, an exactly
resumable data stream, focal_det's evaluator, mixed precision on any device
(:mod:`focal_det.engine.amp`), and everything exact resume needs in one state.

It trains ``.yaml`` configs and LazyConfig ``.py`` ones alike: a ``.py`` config arrives as its
:class:`focal_det.lazy_run.LazyRunConfig` view, and the builders below take their pieces from
it (:mod:`focal_det.engine.lazy`); everything else (hooks, resume, preemption) is one path.

The checkpointed trainer state (``Trainer.state_dict``) is Detectron2's (iteration, hooks:
LR scheduler) plus, under ``"focal_det"``, what Detectron2 does not keep: the optimizer
(Detectron2 v0.6 did not checkpoint it; later versions add ``"_trainer"``, which is used when
present), the torch RNG and what the model keeps outside its state_dict (RetinaNet's EMA loss
normalizer), which ``FocalRetinaNet`` gives through ``training_state()``.
"""
import logging
import os
import warnings
import weakref

import detectron2.utils.comm as comm
import torch
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, hooks
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from ..checkpoint import FocalCheckpointer
from ..config import check_num_classes
from ..lazy_run import LazyRunConfig
from ..modeling.retinanet import FocalRetinaNet
from ..modeling.train_state import ema_normalizer_state, load_ema_normalizer_state
from ..data.checks import FocalDatasetMapper, sanitize_boxes
from ..data.resumable import (PositionalDataset, PositionalSampler,
                              RepeatFactorPositionalDataset, SeededMapper, repeat_factors)
from ..evaluation import build_evaluator
from ..utils.ddp import cpu_ddp_support
from . import amp, class_stats, grad_stats, lazy, loss_state, preemption

# DATALOADER.SAMPLER_TRAIN values whose stream resumes exactly (mid-epoch): Detectron2's
# samplers of these names, drawn positionally (focal_det.data.resumable).
RESUMABLE_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")


def check_repeat_threshold(cfg) -> float:
    threshold = float(cfg.DATALOADER.REPEAT_THRESHOLD)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(
            f"DATALOADER.REPEAT_THRESHOLD={threshold!r} with DATALOADER.SAMPLER_TRAIN "
            "RepeatFactorTrainingSampler must be in (0, 1] (a class in a smaller fraction of the "
            "images is repeated; 0 repeats nothing): LVIS uses 0.001; a smaller dataset about "
            "100 / its number of training images")
    return threshold


# Where checkpoints written before this module existed kept the RNG and EMA state.
_LEGACY_HOOK_SUFFIX = "ResumeStateHook"


def model_training_state(model: torch.nn.Module) -> dict:
    """What exact resume needs of the model beyond its state_dict: FocalRetinaNet's
    ``training_state()`` (its contract); Detectron2's RetinaNet, which has no such method, the
    same EMA normalizer (:mod:`focal_det.modeling.train_state`); any other model: nothing."""
    if isinstance(model, FocalRetinaNet):
        return model.training_state()
    return ema_normalizer_state(model) if isinstance(model, RetinaNet) else {}


def load_model_training_state(model: torch.nn.Module, state: dict) -> None:
    if isinstance(model, FocalRetinaNet):
        model.load_training_state(state)
    elif isinstance(model, RetinaNet):
        load_ema_normalizer_state(model, state)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


class Trainer(DefaultTrainer):
    def __init__(self, cfg, keep_checkpoints: int = 0):
        """``keep_checkpoints``: keep only this many most recent periodic checkpoints (besides
        model_final); 0 keeps all, as Detectron2 does."""
        self.keep_checkpoints = keep_checkpoints
        precision = amp.train_precision(cfg)  # before any work: a device that cannot is an error
        with cpu_ddp_support(), warnings.catch_warnings():  # gloo lets CPU processes train too
            # Detectron2 builds a CUDA GradScaler for AMP; amp.enable replaces it
            warnings.filterwarnings("ignore", message=".*GradScaler.*")
            super().__init__(cfg)
        if precision is not None:
            amp.enable(self._trainer, cfg.MODEL.DEVICE, precision)

    def build_hooks(self):
        # DefaultTrainer made a DetectionCheckpointer just before calling this; swap in ours
        # (atomic saves, code-free loading) before the checkpoint hook captures it.
        self.checkpointer = FocalCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        ret = super().build_hooks()
        lazy_cfg = isinstance(self.cfg, LazyRunConfig)
        for h in ret:
            if isinstance(h, hooks.PeriodicCheckpointer):
                if self.keep_checkpoints > 0:
                    h.max_to_keep = self.keep_checkpoints
                elif lazy_cfg and self.cfg.max_to_keep:  # train.checkpointer.max_to_keep
                    h.max_to_keep = self.cfg.max_to_keep
            if isinstance(h, hooks.PeriodicWriter) and lazy_cfg:
                h._period = self.cfg.log_period  # train.log_period
        losses = class_stats.stateful_losses(unwrap(self.model))
        if losses:  # EFL's per-class statistics over training (OUTPUT_DIR/class_stats.jsonl)
            ret.append(class_stats.ClassStatsWriter(
                losses, self.cfg.OUTPUT_DIR, self.cfg.log_period if lazy_cfg else 20))
        # Last: it sees the iteration after every other hook (checkpoint, writers) is done.
        self.preemption_hook = preemption.PreemptionHook()
        return [self.preemption_hook.marker] + ret + [self.preemption_hook]

    def train(self):
        """Detectron2's training loop; a signal (focal_det.engine.preemption) ends it with a
        checkpoint of the last complete iteration and exit code 75. Returns the last
        evaluation's results ({} without one), as Detectron2 does only with
        ``TEST.EXPECTED_RESULTS``."""
        try:
            super().train()
            return getattr(self, "_last_eval_results", {})
        except preemption.Preempted:
            preemption.save_and_exit(self.checkpointer, self.cfg.OUTPUT_DIR, self.start_iter,
                                     getattr(self, "preemption_hook", None))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        if preemption.requested():  # e.g. the final evaluation after a signal
            raise preemption.Preempted()
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_model(cls, cfg):
        if isinstance(cfg, LazyRunConfig):
            model = lazy.build_model(cfg)
            logging.getLogger(__name__).info(f"Model:\n{model}")
            return model
        return super().build_model(cfg)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        if isinstance(cfg, LazyRunConfig):
            return lazy.build_lr_scheduler(cfg, optimizer)
        return super().build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_optimizer(cls, cfg, model):
        if isinstance(cfg, LazyRunConfig):
            optimizer = lazy.build_optimizer(cfg, model)
        else:
            optimizer = super().build_optimizer(cfg, model)
        grad_stats.install(optimizer, model, cfg)  # MODEL.FOCAL_DET.GRAD_STATS_ITERS > 0 only
        loss_state.install(optimizer, model)  # losses with state (EFL) learn after each step
        return optimizer

    @classmethod
    def build_train_loader(cls, cfg, start_position: int = 0):
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        if isinstance(cfg, LazyRunConfig):
            return lazy.build_train_loader(cfg, seed, start_position)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        check_num_classes(cfg)  # loading the datasets has set their metadata
        dataset = sanitize_boxes(dataset, cfg.DATASETS.TRAIN)
        mapper = FocalDatasetMapper(cfg, True)
        sampler = cfg.DATALOADER.SAMPLER_TRAIN
        if sampler not in RESUMABLE_SAMPLERS:  # Detectron2's, resumed at the iteration only
            return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
        # Exactly resumable stream (focal_det.data.resumable), otherwise as Detectron2's sampler.
        if sampler == "RepeatFactorTrainingSampler":
            factors = repeat_factors(dataset, check_repeat_threshold(cfg),
                                     sqrt=cfg.DATALOADER.get("REPEAT_SQRT", True))
            logging.getLogger(__name__).info(
                f"Repeat-factor sampling at threshold {cfg.DATALOADER.REPEAT_THRESHOLD}: "
                f"{int((factors > 1).sum())} of {len(dataset)} images repeated (factors up to "
                f"{float(factors.max()):.2f}), about {float(factors.sum()):.0f} images an epoch")
            positional = RepeatFactorPositionalDataset(dataset, seed, factors)
        else:
            positional = PositionalDataset(dataset, seed)
        return build_detection_train_loader(
            cfg, mapper=SeededMapper(mapper, seed), dataset=positional,
            sampler=PositionalSampler(start_position),
        )

    def state_dict(self):
        ret = super().state_dict()
        ret.setdefault("_trainer", self._trainer.state_dict())
        state = {"torch_rng": torch.get_rng_state()}
        state.update(model_training_state(unwrap(self.model)))
        ret["focal_det"] = state
        return ret

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        hook_states = dict(state_dict.get("hooks", {}))
        legacy = [k for k in hook_states if k.endswith(_LEGACY_HOOK_SUFFIX)]
        state = state_dict.pop("focal_det", None) or (hook_states.pop(legacy[0]) if legacy
                                                      else None)
        state_dict["hooks"] = {k: v for k, v in hook_states.items()
                               if not k.endswith(_LEGACY_HOOK_SUFFIX)}
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        if state is not None:
            torch.set_rng_state(state["torch_rng"])
            load_model_training_state(unwrap(self.model), state)

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter > 0 and self.cfg.DATALOADER.SAMPLER_TRAIN in RESUMABLE_SAMPLERS:
            # Continue the data stream where the checkpointed run was, not at its beginning.
            def build():
                return self.build_train_loader(
                    self.cfg, start_position=self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH)

            if hasattr(self._trainer, "reset_data_loader"):
                # Detectron2 after v0.6: _data_loader_iter is a read-only, lazily made property
                self._trainer.reset_data_loader(build)
            else:  # v0.6: a plain attribute made in the constructor
                self._trainer.data_loader = build()
                self._trainer._data_loader_iter = iter(self._trainer.data_loader)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if isinstance(cfg, LazyRunConfig):
            return preemption.StopOnSignal(lazy.build_test_loader(cfg, dataset_name))
        return preemption.StopOnSignal(build_detection_test_loader(
            cfg, dataset_name, mapper=FocalDatasetMapper(cfg, False)))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if isinstance(cfg, LazyRunConfig):
            return lazy.build_evaluator(cfg, dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(dataset_name, output_dir=output_folder)  # by evaluator_type
