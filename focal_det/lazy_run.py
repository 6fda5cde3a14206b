"""A LazyConfig ``.py`` config as the ``CfgNode`` the engine reads, so ``.yaml`` and ``.py``
configs train, resume, evaluate and draw through one :class:`focal_det.engine.Trainer`.

:func:`run_config` maps the LazyConfig's ``train``/``dataloader``/``model`` settings onto the
keys the trainer, the preflight checks and the tools read (``OUTPUT_DIR``, ``SOLVER.MAX_ITER``,
``DATASETS.TRAIN``, ``MODEL.WEIGHTS``, ...) and keeps the LazyConfig itself as ``.lazy``: the
model, optimizer, LR multiplier, loaders and evaluator are still instantiated from it
(:mod:`focal_det.engine.lazy`), so whatever a ``.py`` config says is what runs.

=================================  =============================================
LazyConfig                         key the engine reads
=================================  =============================================
``train.output_dir``               ``OUTPUT_DIR``
``train.device``                   ``MODEL.DEVICE``
``train.init_checkpoint``          ``MODEL.WEIGHTS``
``train.seed``                     ``SEED``
``train.max_iter``                 ``SOLVER.MAX_ITER``
``train.checkpointer.period``      ``SOLVER.CHECKPOINT_PERIOD``
``train.eval_period``              ``TEST.EVAL_PERIOD``
``train.amp.enabled/.precision``   ``SOLVER.AMP.ENABLED/.PRECISION``
``train.grad_stats_iters``         ``MODEL.FOCAL_DET.GRAD_STATS_ITERS``
``dataloader.train.dataset.names`` ``DATASETS.TRAIN``
``dataloader.test.dataset.names``  ``DATASETS.TEST``
``dataloader.train.total_batch_size`` ``SOLVER.IMS_PER_BATCH``
``model.num_classes``              ``MODEL.RETINANET.NUM_CLASSES``
``model.inference_precision``      ``MODEL.FOCAL_DET.INFERENCE_PRECISION``
=================================  =============================================

``train.checkpointer.max_to_keep`` and ``train.log_period`` are kept as attributes
(``max_to_keep``, ``log_period``): the ``.yaml`` schema has no key for them. ``train.ddp`` is
Detectron2's ``DefaultTrainer`` DDP (``broadcast_buffers=False``, the rest default); another
setting there is refused, not ignored.
"""
from typing import List

from detectron2.config import CfgNode

from .config import get_cfg
from .errors import FocalDetError

__all__ = ["LazyRunConfig", "run_config", "dataset_names", "lazy_resize", "train_augmentations",
           "KEYS"]

KEYS = {"MODEL.WEIGHTS": "train.init_checkpoint", "OUTPUT_DIR": "train.output_dir",
        "MODEL.DEVICE": "train.device"}


DDP_DEFAULTS = {"broadcast_buffers": False, "find_unused_parameters": False,
                "fp16_compression": False}


class LazyRunConfig(CfgNode):
    """The engine's view of a LazyConfig (``.lazy``); see the module docstring."""

    lazy = None
    max_to_keep = None
    log_period = 20

    def key(self, name: str) -> str:
        """The LazyConfig key behind engine key ``name`` (for messages)."""
        return KEYS.get(name, name)


def dataset_names(node) -> List[str]:
    """The dataset names of a loader node (``names`` may be one string or a list)."""
    if node is None:
        return []
    names = node.dataset.names
    return [names] if isinstance(names, str) else list(names)


def lazy_resize(cfg):
    """(short edge, max size) of the test mapper's ResizeShortestEdge: the test resize, as the
    engine (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``) and ``Predictor`` read it."""
    for aug in cfg.dataloader.test.mapper.get("augmentations", []):
        if "short_edge_length" in aug:
            short = aug.short_edge_length
            short = short if isinstance(short, int) else list(short)[0]
            return int(short), int(aug.get("max_size", 1333))
    raise ValueError("dataloader.test.mapper.augmentations has no ResizeShortestEdge: "
                     "the test resize is unknown")


def train_augmentations(cfg) -> list:
    """The training mapper's augmentations of either config kind: a :class:`LazyRunConfig`'s
    ``dataloader.train.mapper.augmentations`` (instantiated, as its train loader runs them), a
    ``.yaml`` ``CfgNode``'s from ``INPUT.*`` (Detectron2's ``build_augmentation``)."""
    if isinstance(cfg, LazyRunConfig):
        from detectron2.config import instantiate

        mapper = cfg.lazy.dataloader.train.mapper
        return [instantiate(a) for a in mapper.get("augmentations", [])]
    from detectron2.data.detection_utils import build_augmentation

    return build_augmentation(cfg, is_train=True)


def run_config(lazy) -> LazyRunConfig:
    """The frozen engine view of LazyConfig ``lazy`` (see the module docstring)."""
    train, loaders = lazy.train, lazy.dataloader
    ddp = {k: v for k, v in dict(train.get("ddp", {})).items() if DDP_DEFAULTS.get(k) != v}
    if ddp:
        raise FocalDetError(f"train.ddp={ddp}: focal_det's engine runs Detectron2's "
                            f"DefaultTrainer DDP {DDP_DEFAULTS}; other settings are not "
                            "supported (remove them)")
    cfg = get_cfg()
    cfg.OUTPUT_DIR = train.output_dir
    cfg.MODEL.DEVICE = train.device
    cfg.MODEL.WEIGHTS = train.init_checkpoint or ""
    cfg.MODEL.RETINANET.NUM_CLASSES = int(lazy.model.num_classes)
    cfg.MODEL.FOCAL_DET.GRAD_STATS_ITERS = int(train.get("grad_stats_iters", 0))
    cfg.MODEL.FOCAL_DET.INFERENCE_PRECISION = lazy.model.get("inference_precision", "float32")
    cfg.SEED = int(train.get("seed", -1))
    cfg.CUDNN_BENCHMARK = bool(train.get("cudnn_benchmark", False))
    cfg.SOLVER.MAX_ITER = int(train.max_iter)
    cfg.SOLVER.CHECKPOINT_PERIOD = int(train.checkpointer.period)
    amp = train.get("amp", {})
    cfg.SOLVER.AMP.ENABLED = bool(amp.get("enabled", False))
    cfg.SOLVER.AMP.PRECISION = amp.get("precision", "auto")
    cfg.TEST.EVAL_PERIOD = int(train.eval_period)
    train_loader, test_loader = loaders.get("train"), loaders.get("test")
    cfg.DATASETS.TRAIN = tuple(dataset_names(train_loader))
    cfg.DATASETS.TEST = tuple(dataset_names(test_loader)) if "evaluator" in loaders else ()
    if train_loader is not None:
        cfg.SOLVER.IMS_PER_BATCH = int(train_loader.total_batch_size)
        cfg.DATALOADER.NUM_WORKERS = int(train_loader.get("num_workers", 0))
        cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = bool(
            train_loader.dataset.get("filter_empty", True))
        if train_loader.get("sampler") is not None:
            cfg.DATALOADER.SAMPLER_TRAIN = "LazyConfig"  # its own: not the resumable stream
    if test_loader is not None:
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = lazy_resize(lazy)
        cfg.INPUT.FORMAT = test_loader.mapper.get("image_format", "BGR")
    view = LazyRunConfig(cfg)
    object.__setattr__(view, "lazy", lazy)
    checkpointer = train.get("checkpointer", {})
    object.__setattr__(view, "max_to_keep", checkpointer.get("max_to_keep"))
    object.__setattr__(view, "log_period", int(train.get("log_period", 20)))
    view.freeze()
    return view
