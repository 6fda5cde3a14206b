"""Bad data in, clear messages out: unreadable images name the file and dataset; boxes with no
area are dropped and boxes reaching outside their image are clipped, with one warning that
counts them (per call), instead of crashing or producing NaN later."""
import logging
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, BoxMode

logger = logging.getLogger(__name__)


class ImageReadError(RuntimeError):
    pass


def sanitize_boxes(dataset_dicts: List[Dict], dataset_names: Sequence[str]) -> List[Dict]:
    """Drop zero/negative-size boxes, clip boxes to their image; warn once with the counts."""
    dropped = clipped = 0
    out = []
    for d in dataset_dicts:
        h, w = d.get("height"), d.get("width")
        annos = []
        for a in d.get("annotations", []):
            x0, y0, x1, y1 = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
            if h is not None and w is not None:
                cx0, cy0 = min(max(x0, 0.0), w), min(max(y0, 0.0), h)
                cx1, cy1 = min(max(x1, 0.0), w), min(max(y1, 0.0), h)
                if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1) and cx1 > cx0 and cy1 > cy0:
                    clipped += 1
                x0, y0, x1, y1 = cx0, cy0, cx1, cy1
            if not (x1 > x0 and y1 > y0):
                dropped += 1
                continue
            a = dict(a, bbox=[x0, y0, x1, y1], bbox_mode=BoxMode.XYXY_ABS)
            annos.append(a)
        if "annotations" in d:
            d = dict(d, annotations=annos)
        out.append(d)
    if dropped or clipped:
        logger.warning(
            f"Datasets {list(dataset_names)}: dropped {dropped} box(es) with zero or negative "
            f"size (after clipping), clipped {clipped} box(es) reaching outside their image."
        )
    return out


class FocalDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper; a missing or unreadable image names the file and dataset.

    Built from a cfg (``FocalDatasetMapper(cfg, is_train)``) or, as ``DatasetMapper`` in a
    LazyConfig, from keywords (``dataset_names`` then names the data in messages)."""

    def __init__(self, *args, dataset_names=(), keep_crowd: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = args[0] if args and not isinstance(args[0], bool) else None
        if cfg is not None:
            is_train = args[1] if len(args) > 1 else kwargs.get("is_train", True)
            dataset_names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
            keep_crowd = is_train and cfg.MODEL.FOCAL_DET.CROWD.ENABLED
        self.dataset_names = [dataset_names] if isinstance(dataset_names, str) \
            else list(dataset_names)
        # Crowd boxes (iscrowd: 1) kept as dataset_dict["crowd_boxes"] (focal_det.modeling.crowd)
        self.keep_crowd = keep_crowd

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        crowd = [a for a in dataset_dict.get("annotations", []) if a.get("iscrowd", 0)]
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        if self.keep_crowd:
            boxes = [utils.transform_instance_annotations(dict(a, iscrowd=0), transforms,
                                                          image_shape)["bbox"] for a in crowd]
            boxes = Boxes(torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))
            boxes.clip(image_shape)
            dataset_dict["crowd_boxes"] = boxes[boxes.nonempty()]

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:  # missing file, or PIL cannot decode it
            name = dataset_dict.get("file_name", "<no file_name>")
            raise ImageReadError(
                f"Cannot read image {name!r} of dataset(s) {self.dataset_names}: "
                f"{type(e).__name__}: {e}"
            ) from e
