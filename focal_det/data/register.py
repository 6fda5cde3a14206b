"""Datasets named on the command line: ``--register-coco NAME JSON IMAGE_ROOT`` (repeatable)."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..preflight import MissingFileError, PreflightError


def register_coco_datasets(specs) -> None:
    """Register each ``(NAME, JSON, IMAGE_ROOT)``, a COCO-format dataset of your own, so that a
    config can refer to it by NAME. Run in every process before the config is used; the same
    registration made twice is fine, another dataset under a taken name is an error."""
    for name, json_file, image_root in specs or ():
        if not os.path.isfile(json_file):
            raise MissingFileError(f"--register-coco {name}: annotation file {json_file!r} "
                                   "does not exist")
        if not os.path.isdir(image_root):
            raise MissingFileError(f"--register-coco {name}: image folder {image_root!r} "
                                   "does not exist")
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file", None) == json_file:
                continue  # this same registration, made again (e.g. after the preflight)
            raise PreflightError(f"--register-coco {name}: a dataset with this name is already "
                                 "registered (pick another name)")
        register_coco_instances(name, {}, json_file, image_root)
