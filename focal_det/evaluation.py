"""COCO evaluation: Detectron2's COCOEvaluator, with AP 0 (not NaN) when nothing is detected."""
from detectron2.evaluation import COCOEvaluator

from ._detectron2 import has_real_extension

BBOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class FocalCOCOEvaluator(COCOEvaluator):
    """Box AP, AP50, AP75, APs, APm, APl. A model that detects nothing scores 0, which is what
    it is, instead of Detectron2's NaN (which also breaks plots and comparisons)."""

    def __init__(self, dataset_name, output_dir=None, distributed=True):
        # The fast (C++) COCO-eval path exists only with a compiled detectron2._C.
        super().__init__(dataset_name, tasks=("bbox",), distributed=distributed,
                         output_dir=output_dir, use_fast_impl=has_real_extension())

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if coco_eval is None and iou_type == "bbox":
            self._logger.warning("The model made no detections: reporting AP = 0.")
            return {m: 0.0 for m in BBOX_METRICS}
        return super()._derive_coco_results(coco_eval, iou_type, class_names)
