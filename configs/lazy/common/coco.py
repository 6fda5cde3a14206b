# COCO 2017 loaders (Detectron2's coco_2017_train / coco_2017_val) with focal_det's mapper (an
# unreadable image names its file) and evaluator, as configs/Base-FocalRetinaNet.yaml.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (build_detection_test_loader, build_detection_train_loader,
                             get_detection_dataset_dicts)
from omegaconf import OmegaConf

from focal_det.data.checks import FocalDatasetMapper
from focal_det.evaluation import build_evaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(FocalDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(800,), sample_style="choice",
                                    max_size=1333),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        dataset_names="${..dataset.names}",
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(FocalDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
        dataset_names="${..dataset.names}",
    ),
    num_workers=4,
)

# The evaluator by the test set's metadata evaluator_type: COCO's, or LVIS's (AP, APr, APc, APf).
dataloader.evaluator = L(build_evaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${oc.select:train.output_dir,output}/inference",
)
