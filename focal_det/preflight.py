"""Checks that run before any work: the device asked for exists, and every dataset the run will
read (``DATASETS.TRAIN`` and ``DATASETS.TEST``) is there and sound. A fatal problem is a
:class:`PreflightError` with one message naming the key, file or value; box problems are one
warning with counts. Nothing is written before these checks pass.

For COCO-format datasets (registered with a ``json_file``, as Detectron2's COCO splits,
``--register-coco`` and the built-in dataset are) the json itself is read here: missing or
unreadable file, malformed json, missing keys, annotations whose category is not in
``categories``, images listed but missing on disk, boxes with no area or outside the image.
LVIS-format ones (metadata ``evaluator_type`` "lvis", as Detectron2's ``lvis_*`` splits): also
each category's ``frequency`` and each image's ``neg_category_ids`` /
``not_exhaustive_category_ids``, and images found through ``coco_url`` as Detectron2 does.
"""
import json
import logging
import os
from collections import Counter
from typing import Iterable, List

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from .errors import FocalDetError

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("images", "annotations", "categories")
DATASETS_README = "datasets/README.md"


class PreflightError(FocalDetError, ValueError):
    pass


class MissingFileError(PreflightError, FileNotFoundError):
    pass


def check_device(device: str, num_gpus: int = 1) -> None:
    """``MODEL.DEVICE`` and ``--num-gpus`` against this machine."""
    if torch.cuda.is_available():
        if num_gpus > torch.cuda.device_count():
            raise PreflightError(f"--num-gpus {num_gpus}: this machine has "
                                 f"{torch.cuda.device_count()} CUDA GPU(s)")
        return
    if num_gpus > 1:
        raise PreflightError(
            f"--num-gpus {num_gpus}: this machine has no CUDA GPU (torch.cuda.is_available() "
            "is False). On a CPU, run one process (--num-gpus 1) with MODEL.DEVICE cpu: it uses "
            "every core through torch's threads.")
    if device.startswith("cuda"):
        raise PreflightError(
            f"MODEL.DEVICE={device!r}, but this machine has no CUDA GPU "
            "(torch.cuda.is_available() is False). Add MODEL.DEVICE cpu to the command line "
            "to run on the CPU.")


def _where_datasets_live() -> str:
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    return (f"DETECTRON2_DATASETS is {root!r} ({os.path.abspath(root)}); "
            f"{DATASETS_README} shows how to lay COCO out there")


def _read_json(name: str, json_file: str) -> dict:
    if not os.path.isfile(json_file):
        raise MissingFileError(
            f"dataset {name!r}: annotation file {json_file} does not exist. "
            + _where_datasets_live() + ".")
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise PreflightError(f"dataset {name!r}: {json_file} is not valid json ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PreflightError(f"dataset {name!r}: cannot read {json_file} ({e})") from None
    if not isinstance(coco, dict):
        raise PreflightError(f"dataset {name!r}: {json_file} holds a {type(coco).__name__}, "
                             "not a COCO dict")
    missing = [k for k in REQUIRED_KEYS if k not in coco]
    if missing:
        raise PreflightError(f"dataset {name!r}: {json_file} has no {missing} "
                             f"(a COCO json needs {list(REQUIRED_KEYS)})")
    return coco


def _first(items: List, n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def check_weights(key: str, path: str) -> None:
    """A local weights file named by ``key`` (e.g. MODEL.WEIGHTS) exists; URLs and
    ``detectron2://`` paths are left to Detectron2's downloader."""
    if not path or "://" in path:
        return
    local = path.split("?", 1)[0]
    if not os.path.isfile(local):
        hint = (" (the paper-faithful configs load a backbone made by "
                "tools/pretrain_backbone.py: run `make pretrain` first)"
                if local.endswith("backbone.pth") else "")
        raise MissingFileError(f"{key}={path!r} does not exist{hint}")


def _image_path(image_root: str, img: dict, lvis: bool) -> str:
    if lvis and "file_name" not in img and "coco_url" in img:
        # LVIS v1 names no file: Detectron2's load_lvis_json takes the split folder and file
        # from coco_url and appends the folder to image_root as a string ("coco/" + "val2017")
        split_folder, file_name = str(img["coco_url"]).split("/")[-2:]
        return os.path.join(image_root + split_folder, file_name)
    return os.path.join(image_root, str(img.get("file_name")))


def _check_lvis_fields(name: str, json_file: str, coco: dict) -> None:
    """What LVIS's evaluation reads beyond COCO's: each category's frequency group and each
    image's federated lists."""
    bad = [c.get("id") for c in coco["categories"] if c.get("frequency") not in ("r", "c", "f")]
    if bad:
        raise PreflightError(
            f"dataset {name!r} (evaluator_type lvis): {len(bad)} categor(ies) in {json_file} have "
            f"no 'frequency' of 'r', 'c' or 'f' (LVIS's rare/common/frequent groups): ids "
            f"{_first(bad)}")
    for key in ("neg_category_ids", "not_exhaustive_category_ids"):
        missing = [img.get("id") for img in coco["images"] if key not in img]
        if missing:
            raise PreflightError(
                f"dataset {name!r} (evaluator_type lvis): {len(missing)} image(s) in {json_file} "
                f"have no {key!r} (LVIS's federated annotation; [] if none): ids "
                f"{_first(missing)}")


def check_coco_json(name: str, json_file: str, image_root: str, lvis: bool = False) -> None:
    """A COCO json (``lvis``: in LVIS's format, checked as LVIS's evaluation reads it)."""
    coco = _read_json(name, json_file)
    if lvis:
        _check_lvis_fields(name, json_file, coco)
    known = {c.get("id") for c in coco["categories"]}
    unknown = Counter(a.get("category_id") for a in coco["annotations"]
                      if a.get("category_id") not in known)
    if unknown:
        raise PreflightError(
            f"dataset {name!r}: {sum(unknown.values())} annotation(s) in {json_file} use "
            f"category ids not in its 'categories': {_first(sorted(unknown, key=str))}")
    missing = [img.get("file_name", img.get("coco_url")) for img in coco["images"]
               if not os.path.isfile(_image_path(image_root, img, lvis))]
    if missing:
        raise PreflightError(
            f"dataset {name!r}: {len(missing)} of {len(coco['images'])} image(s) listed in "
            f"{json_file} are not in {image_root}: {_first(missing)}")
    sizes = {img.get("id"): (img.get("width"), img.get("height")) for img in coco["images"]}
    empty = outside = 0
    for a in coco["annotations"]:
        x, y, w, h = (list(a.get("bbox") or []) + [0, 0, 0, 0])[:4]
        if not (w > 0 and h > 0):
            empty += 1
            continue
        iw, ih = sizes.get(a.get("image_id"), (None, None))
        if iw and ih and (x < 0 or y < 0 or x + w > iw or y + h > ih):
            outside += 1
    if empty or outside:
        logger.warning(
            f"dataset {name!r} ({json_file}): {empty} box(es) with no area (dropped), "
            f"{outside} box(es) reaching outside their image (clipped).")


def check_datasets(names: Iterable[str]) -> None:
    """Every dataset in ``names`` is registered and, if COCO-format, sound (module docstring)."""
    registered = DatasetCatalog.list()
    for name in dict.fromkeys(names):
        if name not in registered:
            raise PreflightError(
                f"dataset {name!r} is not registered (DATASETS.TRAIN / DATASETS.TEST). "
                "Register your own with --register-coco NAME JSON IMAGE_ROOT.")
        meta = MetadataCatalog.get(name)
        json_file = meta.get("json_file", None)
        if json_file:
            check_coco_json(name, json_file, meta.get("image_root", ""),
                            lvis=meta.get("evaluator_type", None) == "lvis")
