"""What :class:`focal_det.engine.Trainer` builds from a LazyConfig ``.py`` config (its
:class:`focal_det.lazy_run.LazyRunConfig` view): the pieces Detectron2's
``tools/lazyconfig_train_net.py`` instantiates, each in the trainer's own seam, so ``.py`` runs
get every feature ``.yaml`` runs have (the resumable data stream, box sanitizing, the
class-count check, gradient statistics, exact resume, preemption, pictures).

The train loader is the config's ``dataloader.train`` with its dataset wrapped as the ``.yaml``
stream is (sanitized boxes, seeded positional order, resumable mid-epoch) when it is Detectron2's
``build_detection_train_loader`` without a ``sampler`` of its own; otherwise it is instantiated
as written (and resumes at the iteration, not mid-epoch, as with ``DATALOADER.SAMPLER_TRAIN``
other than ``TrainingSampler``).
"""
import copy
import logging
import pydoc

from detectron2.config import instantiate
from detectron2.data import build_detection_train_loader
from detectron2.evaluation import LVISEvaluator
from detectron2.solver import LRMultiplier

from ..config import check_num_classes
from ..data.checks import sanitize_boxes
from ..data.resumable import PositionalDataset, PositionalSampler, SeededMapper
from ..lvis_evaluation import ensure_lvis_numpy_compat

logger = logging.getLogger("focal_det")


def build_model(cfg):
    model = instantiate(cfg.lazy.model)
    return model.to(cfg.MODEL.DEVICE)


def build_optimizer(cfg, model):
    optimizer = copy.deepcopy(cfg.lazy.optimizer)
    optimizer.params.model = model
    return instantiate(optimizer)


def build_lr_scheduler(cfg, optimizer):
    """``lr_multiplier`` (a ParamScheduler over the whole run), as Detectron2's LRScheduler hook
    wraps it for LazyConfig runs."""
    return LRMultiplier(optimizer, multiplier=instantiate(cfg.lazy.lr_multiplier),
                        max_iter=cfg.SOLVER.MAX_ITER)


def _fields(node) -> dict:
    """A LazyCall node's arguments, instantiated, and its target as a callable."""
    fields = {k: instantiate(v) for k, v in node.items()}
    target = fields.pop("_target_")
    return (pydoc.locate(target) if isinstance(target, str) else target), fields


def build_train_loader(cfg, seed: int, start_position: int = 0):
    node = cfg.lazy.dataloader.train
    target, fields = _fields(node)
    if target is not build_detection_train_loader or fields.get("sampler") is not None:
        return target(**fields)  # the config's own loader (DATALOADER.SAMPLER_TRAIN notes)
    check_num_classes(cfg)  # loading the datasets has set their metadata
    fields["dataset"] = PositionalDataset(sanitize_boxes(fields["dataset"], cfg.DATASETS.TRAIN),
                                          seed)
    fields["mapper"] = SeededMapper(fields["mapper"], seed)
    fields["sampler"] = PositionalSampler(start_position)
    return target(**fields)


def _test_config(cfg, dataset_name: str):
    """The LazyConfig with its test loader (and evaluator) on ``dataset_name`` only, so each
    test set is evaluated on its own as in ``.yaml`` runs."""
    lazy = copy.deepcopy(cfg.lazy)
    lazy.dataloader.test.dataset.names = dataset_name
    return lazy


def build_test_loader(cfg, dataset_name: str):
    return instantiate(_test_config(cfg, dataset_name).dataloader.test)


def build_evaluator(cfg, dataset_name: str):
    """The config's ``dataloader.evaluator`` on ``dataset_name`` (configs/lazy/common's is
    :func:`focal_det.evaluation.build_evaluator`: by the dataset's evaluator_type). Detectron2's
    own LVISEvaluator gets the NumPy 2 fix too (focal_det.lvis_evaluation)."""
    evaluator = instantiate(_test_config(cfg, dataset_name).dataloader.evaluator)
    if isinstance(evaluator, LVISEvaluator):
        ensure_lvis_numpy_compat()
    return evaluator
