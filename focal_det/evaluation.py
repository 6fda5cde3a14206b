"""COCO evaluation: Detectron2's COCOEvaluator with the fastest exact evaluator available, and
AP 0 (not NaN) when nothing is detected.

Which COCOeval computes AP:

1. Detectron2's C++ ``COCOeval_opt`` when ``detectron2._C`` is compiled;
2. otherwise ``faster_coco_eval.COCOeval_faster`` (PyPI ``faster-coco-eval``, maintained, C++
   accumulation) when it is installed;
3. otherwise pycocotools' ``COCOeval`` (the official implementation; slowest).

All three give the same AP (``tests/test_evaluation.py`` checks 2 against 3 to 1e-4 on the
built-in val split). ``FOCAL_DET_COCOEVAL=pycocotools`` forces 3.

:func:`build_evaluator` picks the evaluator by the dataset's metadata ``evaluator_type``, as
Detectron2's ``tools/train_net.py`` does: "lvis" (Detectron2's ``lvis_*`` splits, the built-in
long-tailed data) gets :class:`focal_det.lvis_evaluation.FocalLVISEvaluator` (AP, APr, APc,
APf), anything else this COCO evaluator (Detectron2's converts a dataset without a json).
"""
import contextlib
import os
from typing import Optional

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as _d2_coco

from ._detectron2 import has_real_extension

BBOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def faster_cocoeval() -> Optional[type]:
    """faster-coco-eval's COCOeval class when installed (and not disabled), else None."""
    if os.environ.get("FOCAL_DET_COCOEVAL") == "pycocotools":
        return None
    try:
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        return None
    return COCOeval_faster


def cocoeval_in_use() -> str:
    if os.environ.get("FOCAL_DET_COCOEVAL") != "pycocotools" and has_real_extension():
        return "detectron2 COCOeval_opt"
    return "faster-coco-eval" if faster_cocoeval() is not None else "pycocotools"


@contextlib.contextmanager
def _fast_cocoeval_as(cls):
    # Detectron2 (v0.6 and main alike) looks up the module-level name COCOeval_opt when it
    # evaluates with use_fast_impl; bind it to ``cls`` for this evaluation only.
    previous = _d2_coco.COCOeval_opt
    _d2_coco.COCOeval_opt = cls
    try:
        yield
    finally:
        _d2_coco.COCOeval_opt = previous


class FocalCOCOEvaluator(COCOEvaluator):
    """Box AP, AP50, AP75, APs, APm, APl with the fastest exact COCOeval available (module
    docstring). A model that detects nothing scores 0, which is what it is, instead of
    Detectron2's NaN (which also breaks plots and comparisons)."""

    def __init__(self, dataset_name, output_dir=None, distributed=True):
        use = cocoeval_in_use()
        self._substitute = faster_cocoeval() if use == "faster-coco-eval" else None
        super().__init__(dataset_name, tasks=("bbox",), distributed=distributed,
                         output_dir=output_dir, use_fast_impl=use != "pycocotools")
        self._use_fast_impl = use != "pycocotools"  # Detectron2 main resets it without _C
        self._logger.info(f"COCO evaluation with {use}")

    def _eval_predictions(self, predictions, img_ids=None):
        if self._substitute is None:
            return super()._eval_predictions(predictions, img_ids)
        with _fast_cocoeval_as(self._substitute):
            return super()._eval_predictions(predictions, img_ids)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if coco_eval is None and iou_type == "bbox":
            self._logger.warning("The model made no detections: reporting AP = 0.")
            return {m: 0.0 for m in BBOX_METRICS}
        return super()._derive_coco_results(coco_eval, iou_type, class_names)


def build_evaluator(dataset_name: str, output_dir: Optional[str] = None, distributed=True):
    """The evaluator of ``dataset_name`` by its metadata's ``evaluator_type`` (module
    docstring): LVIS's for "lvis", COCO's otherwise."""
    from detectron2.data import MetadataCatalog

    if MetadataCatalog.get(dataset_name).get("evaluator_type", None) == "lvis":
        from .lvis_evaluation import FocalLVISEvaluator

        return FocalLVISEvaluator(dataset_name, output_dir=output_dir, distributed=distributed)
    return FocalCOCOEvaluator(dataset_name, output_dir=output_dir, distributed=distributed)
