"""The long-tailed built-in dataset: the letters data's 34 glyph classes with LVIS's long tail.

Training images per class (``image_count``) fall from ``max_images`` to ``min_images``
geometrically with the class's rank: the number of classes with n images is proportional to
1/n (a power law with exponent -1), so each decade of image counts holds the same number of
classes, as LVIS v1's 337 rare / 461 common / 405 frequent classes spread over its decades.
The defaults (1,000 down to 1 image) give LVIS's three groups about a third of the classes each:
rare (r) <= 10 images, common (c) 11-100, frequent (f) > 100. Which glyph gets which rank is a
seeded permutation, so rarity is not alphabetical.

How the training images are composed (``plan``): the classes are placed from the most frequent
down, each in ``image_count`` distinct images drawn at random among those with room; a rare
class only goes into images that already hold a frequent object (rare objects share images
with frequent ones, so repeat-factor sampling repeats frequent objects too, as on LVIS). Each class appears once in
each of its images, at most ``max_objects`` classes an image; images no frequent class drew
stay empty (hard negatives only). Validation is balanced: ``val_per_class`` instances of every
class, 1 to ``max_objects`` distinct classes an image, so every class has a per-class AP.

Annotations are exhaustive, so in LVIS's federated terms every class absent from an image is a
verified negative (``neg_category_ids``) and none is ``not_exhaustive``; each category carries
LVIS's ``frequency`` ('r'/'c'/'f'), ``image_count`` and ``instance_count`` (training counts, in
both splits' json as in LVIS v1). Glyphs are drawn by the letters renderer, one per cell of a
2 x 2 grid (never overlapping, always placeable), over the same cluttered backgrounds and
unannotated distractor shapes. Registered: ``focal_det_longtail_{train,val}``, evaluated by
Detectron2's ``LVISEvaluator`` (AP, APr, APc, APf).
"""
import json
import os
from dataclasses import asdict, dataclass
from typing import ClassVar, Dict, List, Tuple

import numpy as np

from .builtin import GeneratedSpec, _background, _draw, write_images
from .letters import _SHAPES, LETTER_CLASSES, _contrasting_color, _glyph, _paste

# LVIS's groups by training image count (LVIS v1: rare 1-10, common 11-100, frequent > 100).
RARE_MAX, COMMON_MAX = 10, 100


def frequency_group(image_count: int) -> str:
    """LVIS's group of a class with ``image_count`` training images: 'r', 'c' or 'f'."""
    return "r" if image_count <= RARE_MAX else "c" if image_count <= COMMON_MAX else "f"


@dataclass(frozen=True)
class LongtailSpec(GeneratedSpec):
    prefix: ClassVar[str] = "focal_det_longtail"
    classes: ClassVar[Tuple[str, ...]] = LETTER_CLASSES
    evaluator_type: ClassVar[str] = "lvis"

    num_train: int = 2500
    max_images: int = 1000  # training images of the most frequent class
    min_images: int = 1  # of the rarest
    val_per_class: int = 20
    image_size: int = 128
    max_objects: int = 4  # one glyph per cell of a 2 x 2 grid
    max_distractors: int = 3
    min_size: int = 12  # glyph height in pixels
    max_size: int = 30
    seed: int = 3802

    def __post_init__(self):
        cell = self.image_size // 2
        if not 6 <= self.min_size <= self.max_size <= cell - 4:
            raise ValueError(f"LongtailSpec: need 6 <= min_size ({self.min_size}) <= max_size "
                             f"({self.max_size}) <= image_size / 2 - 4 ({cell - 4})")
        if not 1 <= self.max_objects <= 4:
            raise ValueError(f"LongtailSpec: max_objects ({self.max_objects}) must be 1-4 "
                             "(one glyph per cell of a 2 x 2 grid)")
        if not 1 <= self.min_images <= self.max_images <= self.num_train:
            raise ValueError(f"LongtailSpec: need 1 <= min_images ({self.min_images}) <= "
                             f"max_images ({self.max_images}) <= num_train ({self.num_train})")
        if self.val_per_class < 1:
            raise ValueError(f"LongtailSpec: val_per_class ({self.val_per_class}) must be >= 1")

    @property
    def num_val(self) -> int:
        return len(self.plan()[1])

    def image_counts(self) -> List[int]:
        """Training images of each class (indexed like ``classes``)."""
        k = len(self.classes)
        ranks = np.random.default_rng(self.seed).permutation(k)  # class -> rank
        t = ranks / (k - 1)
        counts = np.rint(self.max_images ** (1 - t) * self.min_images ** t).astype(int)
        return [int(c) for c in counts]

    def frequencies(self) -> List[str]:
        return [frequency_group(n) for n in self.image_counts()]

    def metadata(self) -> Dict:
        return {"class_frequency": self.frequencies(), "class_image_count": self.image_counts()}

    def plan(self) -> Tuple[List[List[int]], List[List[int]]]:
        """The classes (0-based) of every training and validation image (module docstring)."""
        cached = _PLANS.get(self)
        if cached is None:
            cached = _PLANS[self] = (self._train_plan(), self._val_plan())
        return cached

    def _train_plan(self) -> List[List[int]]:
        rng = np.random.default_rng(self.seed + 2)
        counts = self.image_counts()
        images: List[List[int]] = [[] for _ in range(self.num_train)]
        order = sorted(range(len(counts)), key=lambda c: -counts[c])  # frequent first
        for c in order:
            rare = counts[c] <= RARE_MAX
            free = [i for i, cls in enumerate(images) if len(cls) < self.max_objects
                    and (not rare or any(counts[k] > COMMON_MAX for k in cls))]
            if len(free) < counts[c]:
                raise ValueError(f"LongtailSpec: class {self.classes[c]!r} needs {counts[c]} "
                                 f"images but only {len(free)} have room; raise num_train "
                                 f"({self.num_train}) or max_objects ({self.max_objects})")
            for i in rng.choice(free, counts[c], replace=False):
                images[int(i)].append(c)
        return images

    def _val_plan(self) -> List[List[int]]:
        rng = np.random.default_rng(self.seed + 3)
        pending = list(rng.permutation(np.repeat(np.arange(len(self.classes)),
                                                 self.val_per_class)))
        images: List[List[int]] = []
        while pending:
            size, current, rest = int(rng.integers(1, self.max_objects + 1)), [], []
            for c in pending:
                (current if len(current) < size and c not in current else rest).append(int(c))
            images.append(current)
            pending = rest
        return images

    def write_split(self, folder: str, split: str) -> None:
        plan = self.plan()[split != "train"]
        rng = np.random.default_rng(self.seed + (split != "train"))
        images, annotations = write_images(folder, split,
                                           (_scene(rng, self, cls) for cls in plan))
        counts = self.image_counts()
        instances = [0] * len(counts)
        for cls in self.plan()[0]:
            for c in cls:
                instances[c] += 1
        categories = [{"id": c + 1, "name": name, "frequency": frequency_group(counts[c]),
                       "image_count": counts[c], "instance_count": instances[c]}
                      for c, name in enumerate(self.classes)]
        present = {img["id"]: set() for img in images}
        for a in annotations:
            present[a["image_id"]].add(a["category_id"])
        for img in images:  # exhaustive annotation: every absent class is a verified negative
            img["neg_category_ids"] = [c["id"] for c in categories
                                       if c["id"] not in present[img["id"]]]
            img["not_exhaustive_category_ids"] = []
        data = {"info": {"description": f"focal_det built-in {self.prefix}, {split}",
                         "spec": asdict(self)},
                "images": images, "annotations": annotations, "categories": categories}
        with open(os.path.join(folder, f"{split}.json"), "w") as f:
            json.dump(data, f)


_PLANS: Dict[LongtailSpec, Tuple[List[List[int]], List[List[int]]]] = {}


def _scene(rng: np.random.Generator, spec: LongtailSpec, classes: List[int]):
    """One image with one glyph of each of ``classes`` (each in its own grid cell)."""
    s, cell = spec.image_size, spec.image_size // 2
    img = _background(rng, s)
    for _ in range(int(rng.integers(0, spec.max_distractors + 1))):  # first: glyphs stay on top
        size = int(rng.integers(spec.min_size, spec.max_size + 1))
        x0, y0 = (int(v) for v in rng.integers(0, s - size + 1, 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        _draw(img, _SHAPES[int(rng.integers(len(_SHAPES)))], (x0, y0, x0 + size, y0 + size),
              color, rng)
    annotations = []
    cells = rng.permutation(4)[:len(classes)]
    for c, where in zip(classes, cells):
        height = int(np.exp(rng.uniform(np.log(spec.min_size), np.log(spec.max_size))))
        mask = _glyph(spec.classes[c], height, rng)
        mask = mask[:cell - 2, :cell - 2]  # a wide glyph never leaves its cell
        h, w = mask.shape
        cx, cy = int(where % 2) * cell, int(where // 2) * cell
        x0, y0 = cx + int(rng.integers(0, cell - w + 1)), cy + int(rng.integers(0, cell - h + 1))
        _paste(img, mask, x0, y0, _contrasting_color(rng, img, (x0, y0, x0 + w, y0 + h)))
        annotations.append({"bbox": [x0, y0, w, h], "category_id": c + 1,
                            "area": float(w * h), "iscrowd": 0})
    return img, annotations


__all__ = ["LongtailSpec", "frequency_group", "RARE_MAX", "COMMON_MAX"]
