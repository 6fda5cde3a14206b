"""Dataset registration: importing this registers the built-in generated dataset.

COCO itself is Detectron2's own ``coco_2017_train`` / ``coco_2017_val`` (see datasets/README.md).
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .builtin import CLASSES, ShapesSpec, dataset_root, ensure_generated

BUILTIN_SPLITS = {"focal_det_shapes_train": "train", "focal_det_shapes_val": "val"}


def _paths(split: str, spec: ShapesSpec = ShapesSpec()):
    folder = os.path.join(dataset_root(), f"focal_det_shapes_{spec.digest()}")
    return os.path.join(folder, f"{split}.json"), folder


def _load(name: str, split: str):
    folder = ensure_generated()
    return load_coco_json(os.path.join(folder, f"{split}.json"), folder, name)


def register_builtin() -> None:
    for name, split in BUILTIN_SPLITS.items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name, split=split: _load(name, split))
        json_file, image_root = _paths(split)
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASSES), json_file=json_file, image_root=image_root,
            evaluator_type="coco",
        )


def prepare_datasets(dataset_names) -> None:
    """Generate the built-in dataset if any of ``dataset_names`` needs it (before evaluators
    read its json)."""
    if any(n in BUILTIN_SPLITS for n in dataset_names):
        ensure_generated()


register_builtin()

__all__ = ["register_builtin", "prepare_datasets", "ensure_generated", "ShapesSpec", "CLASSES"]
