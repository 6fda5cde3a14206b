"""``Predictor``: Detectron2's ``DefaultPredictor`` (cfg in, ``predictor(bgr_image)`` out) with
weights loaded by :class:`focal_det.checkpoint.FocalCheckpointer`, so a checkpoint cannot run
code. ``DefaultPredictor`` itself loads through ``DetectionCheckpointer``, which unpickles
``.pkl`` files plainly (and, on old PyTorch, ``.pth`` files too)."""
import logging

from detectron2.engine import DefaultPredictor

from .checkpoint import FocalCheckpointer

__all__ = ["Predictor"]


class Predictor(DefaultPredictor):
    """Same interface and pre-processing as ``DefaultPredictor``; safe weight loading."""

    def __init__(self, cfg):
        blank = cfg.clone()
        blank.defrost()
        blank.MODEL.WEIGHTS = ""  # DefaultPredictor builds the model and loads nothing
        quiet = logging.getLogger("fvcore.common.checkpoint")  # its "no checkpoint" message
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            super().__init__(blank)
        finally:
            quiet.setLevel(level)
        self.cfg = cfg.clone()
        FocalCheckpointer(self.model, require_same_classes=True).load(cfg.MODEL.WEIGHTS)
