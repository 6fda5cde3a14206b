"""What inference needs from a config, whether a ``.yaml`` ``CfgNode`` or a LazyConfig: the
model (built, weights not yet loaded), the weights file, the test resize, the input channel
order and the test dataset (for class names). ``Predictor``, ``demo.py`` and
``tools/export_model.py`` read configs only through :func:`inference_spec`."""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from detectron2.config import CfgNode

from .lazy_run import LazyRunConfig, lazy_resize


@dataclass
class InferenceSpec:
    build_model: Callable[[], torch.nn.Module]  # in eval mode, on the config's device
    weights: str
    min_size: int
    max_size: int
    input_format: str
    test_dataset: Optional[str]
    weights_key: str = "MODEL.WEIGHTS"  # where the config names the weights


def inference_spec(cfg) -> InferenceSpec:
    if isinstance(cfg, LazyRunConfig):  # the engine's view of a LazyConfig: read the LazyConfig
        cfg = cfg.lazy
    if isinstance(cfg, CfgNode):
        from detectron2.modeling import build_model

        return InferenceSpec(
            build_model=lambda: build_model(cfg).eval(), weights=cfg.MODEL.WEIGHTS,
            min_size=cfg.INPUT.MIN_SIZE_TEST, max_size=cfg.INPUT.MAX_SIZE_TEST,
            input_format=cfg.INPUT.FORMAT,
            test_dataset=cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
    from detectron2.config import instantiate

    names = cfg.dataloader.test.dataset.names
    min_size, max_size = lazy_resize(cfg)
    return InferenceSpec(
        build_model=lambda: instantiate(cfg.model).to(cfg.train.device).eval(),
        weights=cfg.train.init_checkpoint, min_size=min_size, max_size=max_size,
        input_format=cfg.dataloader.test.mapper.image_format,
        test_dataset=names if isinstance(names, str) else (list(names) or [None])[0],
        weights_key="train.init_checkpoint")


def set_score_threshold(cfg, value: float) -> None:
    """The detector's test score threshold (``SCORE_THRESH_TEST``), either config kind."""
    if isinstance(cfg, LazyRunConfig):
        cfg = cfg.lazy
    if isinstance(cfg, CfgNode):
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = value
    else:
        cfg.model.test_score_thresh = value
