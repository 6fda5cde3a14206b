"""The second built-in dataset: few, small objects of many classes, so that the (anchor, class)
binary classifiers are as imbalanced as at COCO scale.

Each 128 px image holds 0 to ``max_objects`` glyphs (26 capital letters and the digits 2-9: 34
classes; 0 and 1 are left out because they look like O and I) drawn in a Hershey font at 12 to
36 px, on the same cluttered backgrounds as the shapes dataset, with up to ``max_distractors``
unannotated shapes and strokes (hard negatives). Few positives per image times 3,069 anchors x
34 classes gives about one positive per 10^4 negatives after matching (measured by
``focal_det.analysis.imbalance``; docs/REPRODUCTION.md has the numbers).

Generated and registered like the shapes dataset (``ensure_generated``, the parameters hashed
into the folder name). Registered names: ``focal_det_letters_train`` and
``focal_det_letters_val``.
"""
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Tuple

import cv2
import numpy as np

from .builtin import GeneratedSpec, _background, _draw, _iou

LETTER_CLASSES = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ23456789")
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX)
_SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar", "hexagon")


@dataclass(frozen=True)
class LettersSpec(GeneratedSpec):
    prefix: ClassVar[str] = "focal_det_letters"
    classes: ClassVar[Tuple[str, ...]] = LETTER_CLASSES

    num_train: int = 6000
    num_val: int = 200
    image_size: int = 128
    max_objects: int = 2
    max_distractors: int = 4
    min_size: int = 12  # glyph height in pixels
    max_size: int = 36
    empty_fraction: float = 0.1
    seed: int = 1702

    def __post_init__(self):
        if not 6 <= self.min_size <= self.max_size <= self.image_size // 2:
            raise ValueError(
                f"LettersSpec: need 6 <= min_size ({self.min_size}) <= max_size "
                f"({self.max_size}) <= image_size / 2 ({self.image_size // 2})"
            )

    def scene(self, rng: np.random.Generator, empty: bool):
        return _scene(rng, self, empty)


def _glyph(char: str, height: int, rng: np.random.Generator) -> np.ndarray:
    """A tight anti-aliased mask (float 0..1) of ``char`` about ``height`` pixels tall."""
    font = _FONTS[int(rng.integers(len(_FONTS)))]
    (w, h), _ = cv2.getTextSize("H", font, 1.0, 1)
    scale = height / h
    thickness = max(1, round(height / 9 * rng.uniform(0.8, 1.3)))
    pad = thickness + 2
    (tw, th), base = cv2.getTextSize(char, font, scale, thickness)
    canvas = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
    cv2.putText(canvas, char, (pad, pad + th), font, scale, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas >= 128)
    return canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) / 255


def _paste(img: np.ndarray, mask: np.ndarray, x0: int, y0: int, color) -> None:
    h, w = mask.shape
    region = img[y0:y0 + h, x0:x0 + w].astype(np.float32)
    blended = region * (1 - mask[..., None]) + np.asarray(color, np.float32) * mask[..., None]
    img[y0:y0 + h, x0:x0 + w] = np.clip(blended.round(), 0, 255).astype(np.uint8)


def _contrasting_color(rng: np.random.Generator, img: np.ndarray, box) -> Tuple[int, ...]:
    """A random color at least 90 (L1 over BGR / 3) away from the mean of the region below."""
    x0, y0, x1, y1 = box
    under = img[y0:y1, x0:x1].reshape(-1, 3).mean(0)
    for _ in range(20):
        color = rng.integers(0, 256, 3)
        if np.abs(color - under).mean() >= 90:
            break
    return tuple(int(c) for c in color)


def _scene(rng: np.random.Generator, spec: LettersSpec, empty: bool):
    s = spec.image_size
    img = _background(rng, s)
    annotations: List[Dict] = []
    boxes: List[Tuple[int, int, int, int]] = []
    # Distractors first, so that a glyph is never hidden under one.
    for _ in range(int(rng.integers(0, spec.max_distractors + 1))):
        size = int(rng.integers(spec.min_size, spec.max_size + 1))
        x0, y0 = (int(v) for v in rng.integers(0, s - size + 1, 2))
        box = (x0, y0, x0 + size, y0 + size)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.3:  # a stroke: part of a letter, never a whole one
            p0 = (x0, int(rng.integers(y0, y0 + size)))
            p1 = (x0 + size, int(rng.integers(y0, y0 + size)))
            cv2.line(img, p0, p1, color, max(1, size // 9), cv2.LINE_AA)
        else:
            _draw(img, _SHAPES[int(rng.integers(len(_SHAPES)))], box, color, rng)
        boxes.append(box)
    n_obj = 0 if empty else int(rng.integers(1, spec.max_objects + 1))
    placed: List[Tuple[int, int, int, int]] = []
    for cls in rng.integers(0, len(spec.classes), n_obj):
        # Log-uniform heights: small glyphs are common, as small objects are in COCO.
        height = int(np.exp(rng.uniform(np.log(spec.min_size), np.log(spec.max_size))))
        mask = _glyph(spec.classes[int(cls)], height, rng)
        h, w = mask.shape
        if h >= s or w >= s:
            continue
        for _ in range(20):  # glyphs do not overlap each other
            x0, y0 = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            if all(_iou(box, b) == 0 for b in placed):
                break
        else:
            continue
        _paste(img, mask, x0, y0, _contrasting_color(rng, img, box))
        placed.append(box)
        annotations.append({"bbox": [x0, y0, w, h], "category_id": int(cls) + 1,
                            "area": float(w * h), "iscrowd": 0})
    return img, annotations
