"""``Predictor``: Detectron2's ``DefaultPredictor`` (cfg in, ``predictor(bgr_image)`` out) with
weights loaded by :class:`focal_det.checkpoint.FocalCheckpointer`, so a checkpoint cannot run
code. ``DefaultPredictor`` itself loads through ``DetectionCheckpointer``, which unpickles
``.pkl`` files plainly (and, on old PyTorch, ``.pth`` files too). Takes a ``.yaml`` cfg or a
LazyConfig (``focal_det.inference``)."""
import detectron2.data.transforms as T
from detectron2.engine import DefaultPredictor

from .checkpoint import FocalCheckpointer
from .inference import inference_spec

__all__ = ["Predictor"]


class Predictor(DefaultPredictor):
    """Same interface and pre-processing as ``DefaultPredictor``; safe weight loading."""

    def __init__(self, cfg):
        # Not DefaultPredictor.__init__: it would load the weights with DetectionCheckpointer.
        spec = inference_spec(cfg)
        self.cfg = cfg.clone() if hasattr(cfg, "clone") else cfg
        self.model = spec.build_model()
        FocalCheckpointer(self.model, require_same_classes=True).load(spec.weights)
        self.aug = T.ResizeShortestEdge([spec.min_size, spec.min_size], spec.max_size)
        self.input_format = spec.input_format
        assert self.input_format in ["RGB", "BGR"], self.input_format
        if spec.test_dataset is not None:
            from detectron2.data import MetadataCatalog

            self.metadata = MetadataCatalog.get(spec.test_dataset)
