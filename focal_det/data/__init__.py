"""Dataset registration: importing this registers the built-in generated datasets.

- ``focal_det_shapes_{train,val}`` (``builtin.py``): the default, 4 shape classes.
- ``focal_det_letters_{train,val}`` (``letters.py``): 34 glyph classes, few small objects per
  image, COCO-like (anchor, class) imbalance.
- ``focal_det_longtail_{train,val}`` (``longtail.py``): the 34 glyph classes with LVIS's long
  tail (1,000 down to 1 training image a class; rare/common/frequent groups), LVIS-format json,
  evaluated by Detectron2's LVISEvaluator; each class's ``frequency`` and ``image_count`` are in
  the metadata (``class_frequency``, ``class_image_count``).

COCO itself is Detectron2's own ``coco_2017_train`` / ``coco_2017_val`` (see datasets/README.md).
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .builtin import CLASSES, GeneratedSpec, ShapesSpec, dataset_root, ensure_generated
from .letters import LETTER_CLASSES, LettersSpec
from .longtail import LongtailSpec

# Registered name -> (spec of its dataset, split).
BUILTIN_DATASETS = {
    f"{spec.prefix}_{split}": (spec, split)
    for spec in (ShapesSpec(), LettersSpec(), LongtailSpec()) for split in ("train", "val")
}
BUILTIN_SPLITS = {name: split for name, (_, split) in BUILTIN_DATASETS.items()}


def _paths(spec: GeneratedSpec, split: str):
    folder = os.path.join(dataset_root(), spec.folder_name())
    return os.path.join(folder, f"{split}.json"), folder


def _load(name: str, spec: GeneratedSpec, split: str):
    folder = ensure_generated(spec)
    return load_coco_json(os.path.join(folder, f"{split}.json"), folder, name)


def register_builtin() -> None:
    for name, (spec, split) in BUILTIN_DATASETS.items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda n=name, sp=spec, s=split: _load(n, sp, s))
        json_file, image_root = _paths(spec, split)
        MetadataCatalog.get(name).set(
            thing_classes=list(spec.classes), json_file=json_file, image_root=image_root,
            evaluator_type=spec.evaluator_type, **spec.metadata(),
        )


def prepare_datasets(dataset_names) -> None:
    """Generate the built-in datasets that ``dataset_names`` need (before evaluators read
    their json)."""
    for spec in {BUILTIN_DATASETS[n][0] for n in dataset_names if n in BUILTIN_DATASETS}:
        ensure_generated(spec)


register_builtin()

__all__ = ["register_builtin", "prepare_datasets", "ensure_generated", "ShapesSpec",
           "LettersSpec", "LongtailSpec", "CLASSES", "LETTER_CLASSES", "BUILTIN_DATASETS"]
