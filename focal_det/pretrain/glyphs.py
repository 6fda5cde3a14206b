"""The built-in classification source for backbone pretraining: one object per 64 px image.

An ImageNet-to-COCO-like gap to the letters detection data (``focal_det.data.letters``):
- other renderings: the detection glyphs drawn in the Hershey fonts the detection data never
  uses (plain, complex, triplex, complex-small, upright or italic), larger, slightly rotated,
  filled or outlined;
- other classes: 18 lowercase letters (those that do not look like a capital), 7 shapes
  (including the detection data's distractors) and 4 full-image textures;
- other images: every sample is drawn from ``numpy.random.default_rng([seed, split, index])``
  with its own seed, at 64 px (detection: 128 px scenes with 0-2 small glyphs), so no image is
  shared with the detection splits.

An image is a pure function of (seed, split, index): training draws a fresh image per sample
(no epochs, no overfitting), the held-out split is a fixed set of indices of another split.
"""
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

from ..data.builtin import _background, _draw
from ..data.letters import LETTER_CLASSES, _contrasting_color

# Fonts the detection data (SIMPLEX, DUPLEX) does not use.
_FONTS = (cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
          cv2.FONT_HERSHEY_COMPLEX_SMALL)
LOWERCASE = tuple("abdefghijkmnpqrtuy")
SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar", "hexagon")
TEXTURES = ("stripes", "checker", "dots", "grid")
CLASSES: Tuple[str, ...] = (tuple(f"glyph_{c}" for c in LETTER_CLASSES)
                            + tuple(f"lower_{c}" for c in LOWERCASE)
                            + tuple(f"shape_{s}" for s in SHAPES)
                            + tuple(f"texture_{t}" for t in TEXTURES))
SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class GlyphClassification:
    """The generated source: ``item(split, index)`` -> (HxWx3 uint8 BGR image, label)."""

    seed: int = 4242
    image_size: int = 64
    num_val: int = 2000

    classes: Tuple[str, ...] = CLASSES

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {"source": "glyphs", "seed": self.seed, "image_size": self.image_size,
                "num_val": self.num_val, "num_classes": self.num_classes}

    def item(self, split: str, index: int):
        rng = np.random.default_rng([self.seed, SPLITS[split], int(index)])
        label = int(rng.integers(self.num_classes))
        return render(self.classes[label], self.image_size, rng), label

    def train_item(self, position: int, rng_seed: int):
        # A fresh image for every training sample: position is the global sample number.
        del rng_seed
        return self.item("train", position)

    def val_items(self):
        return (self.item("val", i) for i in range(self.num_val))


def _plain_background(rng: np.random.Generator, s: int) -> np.ndarray:
    """A smooth two-color gradient with noise: not the detection data's texture."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, s, dtype=np.float32)
    grad = t[None, :, None] if rng.random() < 0.5 else t[:, None, None]
    img = a * (1 - grad) + b * grad + np.zeros((s, s, 1), np.float32)
    img += rng.normal(0, rng.uniform(2, 12), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _texture(kind: str, rng: np.random.Generator, s: int) -> np.ndarray:
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(5, 14)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == "stripes":
        mask = (np.sin(u * 2 * np.pi / period) > 0)
    elif kind == "checker":
        mask = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    elif kind == "grid":
        mask = ((u % period) < period / 4) | ((v % period) < period / 4)
    else:  # dots
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        mask = du ** 2 + dv ** 2 < (period / 3.5) ** 2
    img = np.where(mask[..., None], c1, c0).astype(np.float32)
    img += rng.normal(0, rng.uniform(2, 10), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _glyph_mask(char: str, height: int, rng: np.random.Generator) -> np.ndarray:
    font = _FONTS[int(rng.integers(len(_FONTS)))] | (cv2.FONT_ITALIC if rng.random() < 0.3 else 0)
    (_, h), _ = cv2.getTextSize("H", font, 1.0, 1)
    scale = height / h
    thickness = max(1, round(height / 10 * rng.uniform(0.7, 1.5)))
    (tw, th), base = cv2.getTextSize(char, font, scale, thickness)
    pad = thickness + 4
    canvas = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
    cv2.putText(canvas, char, (pad, pad + th), font, scale, 255, thickness, cv2.LINE_AA)
    if rng.random() < 0.25:  # outlined instead of filled
        canvas = cv2.morphologyEx(canvas, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    rot = cv2.getRotationMatrix2D((canvas.shape[1] / 2, canvas.shape[0] / 2),
                                  rng.uniform(-15, 15), 1.0)
    canvas = cv2.warpAffine(canvas, rot, (canvas.shape[1], canvas.shape[0]))
    ys, xs = np.nonzero(canvas >= 64)
    return canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) / 255


def render(name: str, s: int, rng: np.random.Generator) -> np.ndarray:
    """One ``s`` x ``s`` BGR image of class ``name``."""
    kind, _, what = name.partition("_")
    if kind == "texture":
        return _texture(what, rng, s)
    img = _background(rng, s) if rng.random() < 0.5 else _plain_background(rng, s)
    size = int(rng.integers(s * 3 // 8, s * 7 // 8 + 1))
    if kind == "shape":
        x0, y0 = (int(v) for v in rng.integers(0, s - size + 1, 2))
        box = (x0, y0, x0 + size, y0 + size)
        _draw(img, what, box, _contrasting_color(rng, img, box), rng)
        return img
    mask = _glyph_mask(what, size, rng)
    h, w = mask.shape
    if h > s or w > s:  # wide glyphs at the largest sizes: shrink to fit
        f = min(s / h, s / w)
        mask = cv2.resize(mask, (max(1, int(w * f)), max(1, int(h * f))))
        h, w = mask.shape
    x0, y0 = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
    color = _contrasting_color(rng, img, (x0, y0, x0 + w, y0 + h))
    region = img[y0:y0 + h, x0:x0 + w].astype(np.float32)
    blended = region * (1 - mask[..., None]) + np.asarray(color, np.float32) * mask[..., None]
    img[y0:y0 + h, x0:x0 + w] = np.clip(blended.round(), 0, 255).astype(np.uint8)
    return img
