"""The built-in dataset: generated scenes that exhibit the problem focal loss solves.

Dense scenes with many small objects of several classes on cluttered textured backgrounds, with
distractor shapes that belong to no class (hard negatives), object sizes spread over the FPN
levels, and some images with no objects at all. Everything is generated deterministically from a
fixed seed, once, as JPEG images + COCO json under ``$DETECTRON2_DATASETS`` (default
``datasets/``); the parameters are hashed into the folder name, so changing them regenerates.
Generation writes to a temporary folder and renames it into place, so two processes starting at
once never see half-written files.

Registered names: ``focal_det_shapes_train`` and ``focal_det_shapes_val``.
"""
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import ClassVar, Dict, List, Tuple

import cv2
import numpy as np

from ..utils.files import follow_umask

logger = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle", "cross")
# Shapes drawn like objects but never annotated: the hard negatives.
DISTRACTORS = ("ring", "bar", "hexagon")


class GeneratedSpec:
    """Base of a generated dataset's parameters (a frozen dataclass): it names its folder
    ``prefix`` and its ``classes``, and draws one image with ``scene(rng, empty)``;
    ``ensure_generated`` does the rest. The fields are hashed into the folder name."""

    prefix: ClassVar[str]
    classes: ClassVar[Tuple[str, ...]]

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def folder_name(self) -> str:
        return f"{self.prefix}_{self.digest()}"

    # Which Detectron2 evaluator its splits take (the registered metadata's evaluator_type).
    evaluator_type: ClassVar[str] = "coco"

    def scene(self, rng: np.random.Generator, empty: bool):
        """One image (HxWx3 uint8 BGR) and its COCO annotations (without ids)."""
        raise NotImplementedError

    def write_split(self, folder: str, split: str) -> None:
        """Write ``split`` ("train" or "val") into ``folder``: ``split/*.jpg`` and
        ``split.json``. The default draws ``num_train`` / ``num_val`` scenes."""
        count = self.num_train if split == "train" else self.num_val
        _write_split(folder, split, count, self, self.seed + (split != "train"))

    def metadata(self) -> Dict:
        """Metadata registered with both splits besides thing_classes, json_file, image_root
        and evaluator_type (none by default)."""
        return {}


@dataclass(frozen=True)
class ShapesSpec(GeneratedSpec):
    prefix: ClassVar[str] = "focal_det_shapes"
    classes: ClassVar[Tuple[str, ...]] = CLASSES

    num_train: int = 4000
    num_val: int = 100
    image_size: int = 128
    max_objects: int = 12
    max_distractors: int = 6
    min_size: int = 10
    max_size: int = 72
    empty_fraction: float = 0.06
    seed: int = 2017

    def __post_init__(self):
        if not 1 <= self.min_size <= self.max_size <= self.image_size:
            raise ValueError(
                f"ShapesSpec: need 1 <= min_size ({self.min_size}) <= max_size "
                f"({self.max_size}) <= image_size ({self.image_size})"
            )

    def scene(self, rng: np.random.Generator, empty: bool):
        return _scene(rng, self, empty)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency color noise plus stripes and speckle: a cluttered texture."""
    coarse = rng.uniform(40, 215, size=(rng.integers(3, 9), rng.integers(3, 9), 3))
    img = cv2.resize(coarse.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size]
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.4)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * freq)
    img += (stripes * rng.uniform(5, 35))[..., None]
    img += rng.normal(0, rng.uniform(4, 16), size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(kind: str, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    n = {"hexagon": 6}[kind]
    ang = rot + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1).round().astype(np.int32)


def _draw(img: np.ndarray, kind: str, box: Tuple[int, int, int, int], color, rng) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if kind == "circle":
        cv2.circle(img, (round(cx), round(cy)), round(r), color, -1, cv2.LINE_AA)
    elif kind == "square":
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), color, -1)
    elif kind == "cross":
        w = max(2, round(r / 2.5))
        cv2.rectangle(img, (x0, round(cy) - w), (x1 - 1, round(cy) + w), color, -1)
        cv2.rectangle(img, (round(cx) - w, y0), (round(cx) + w, y1 - 1), color, -1)
    elif kind == "triangle":  # fills its box, so the annotation is tight
        pts = np.array([[x0, y1 - 1], [x1 - 1, y1 - 1], [round(cx), y0]], dtype=np.int32)
        cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
    elif kind == "ring":
        cv2.circle(img, (round(cx), round(cy)), round(r), color, max(2, round(r / 4)), cv2.LINE_AA)
    elif kind == "bar":
        cv2.rectangle(img, (x0, round(cy) - 2), (x1 - 1, round(cy) + 2), color, -1)
    elif kind == "hexagon":
        cv2.fillPoly(img, [_polygon("hexagon", cx, cy, r, rng.uniform(0, 1))], color, cv2.LINE_AA)


def _scene(rng: np.random.Generator, spec: ShapesSpec, empty: bool):
    s = spec.image_size
    img = _background(rng, s)
    annotations: List[Dict] = []
    boxes: List[Tuple[int, int, int, int]] = []
    n_obj = 0 if empty else int(rng.integers(1, spec.max_objects + 1))
    n_dis = int(rng.integers(0, spec.max_distractors + 1))
    items = [(k, True) for k in rng.integers(0, len(CLASSES), n_obj)]
    items += [(k, False) for k in rng.integers(0, len(DISTRACTORS), n_dis)]
    rng.shuffle(items)
    for kind_idx, is_object in items:
        # Log-uniform sizes: small objects are common, large ones exist (all FPN levels).
        size = int(np.exp(rng.uniform(np.log(spec.min_size), np.log(spec.max_size))))
        for _ in range(20):  # objects do not overlap each other much
            x0, y0 = (int(v) for v in rng.integers(0, s - size + 1, 2))
            box = (x0, y0, x0 + size, y0 + size)
            if all(_iou(box, b) < 0.1 for b in boxes):
                break
        else:
            continue
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = CLASSES[kind_idx] if is_object else DISTRACTORS[kind_idx]
        _draw(img, kind, box, color, rng)
        boxes.append(box)
        if is_object:
            annotations.append({"bbox": [box[0], box[1], size, size], "category_id": int(kind_idx) + 1,
                                "area": float(size * size), "iscrowd": 0})
    return img, annotations


def _iou(a, b) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def write_images(folder: str, split: str, scenes) -> Tuple[List[Dict], List[Dict]]:
    """Write each (image, annotations) of ``scenes`` as ``split/00000.jpg``, ... into ``folder``;
    return the COCO ``images`` and ``annotations`` (ids from 0 and 1)."""
    os.makedirs(os.path.join(folder, split))
    images, annotations = [], []
    for i, (img, anns) in enumerate(scenes):
        name = f"{split}/{i:05d}.jpg"
        cv2.imwrite(os.path.join(folder, name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": i, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
        for a in anns:
            annotations.append(dict(a, id=len(annotations) + 1, image_id=i))
    return images, annotations


def _write_split(folder: str, split: str, count: int, spec: ShapesSpec, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scenes = (spec.scene(rng, empty=rng.random() < spec.empty_fraction) for _ in range(count))
    images, annotations = write_images(folder, split, scenes)
    coco = {
        "info": {"description": f"focal_det built-in {spec.prefix}, {split}", "spec": asdict(spec)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(spec.classes)],
    }
    with open(os.path.join(folder, f"{split}.json"), "w") as f:
        json.dump(coco, f)


def dataset_root() -> str:
    return os.path.abspath(os.getenv("DETECTRON2_DATASETS", "datasets"))


def ensure_generated(spec: GeneratedSpec = ShapesSpec(), root: str = None) -> str:
    """Generate the dataset for ``spec`` once; return its folder (holds train/, val/, *.json)."""
    root = root or dataset_root()
    final = os.path.join(root, spec.folder_name())
    if os.path.exists(os.path.join(final, "val.json")):
        return final
    os.makedirs(root, exist_ok=True)
    logger.info(f"Generating the built-in dataset {spec.prefix} into {final} (once) ...")
    tmp = tempfile.mkdtemp(prefix=f".{spec.prefix}_tmp_", dir=root)
    try:
        spec.write_split(tmp, "train")
        spec.write_split(tmp, "val")
        try:
            follow_umask(tmp, directory=True)  # mkdtemp made it 0700
            os.rename(tmp, final)  # atomic: readers see all of it or none
        except OSError:
            if not os.path.exists(os.path.join(final, "val.json")):
                raise
            logger.info("Another process generated the built-in dataset first; using it.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
