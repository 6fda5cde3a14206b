"""A user's own images for backbone pretraining: an ImageFolder-style directory.

``ROOT/<class>/<image>`` (torchvision's layout; its ``ImageFolder`` finds the files and class
indices). If ``ROOT`` has ``train/`` and ``val/`` subfolders they are the two splits; otherwise
a fixed ``val_fraction`` of each class (chosen from the file names' order with the seed) is held
out. Images are read as BGR (Detectron2's input format) and go through a seeded random resized
crop (and optional horizontal flip) for training, a center crop for evaluation.
"""
import os
from dataclasses import dataclass, field
from typing import List, Tuple

import cv2
import numpy as np

from ..errors import FocalDetError


class FolderSourceError(FocalDetError, ValueError):
    pass


def _read_bgr(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FolderSourceError(f"{path}: not a readable image")
    return img


def _scan(root: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(root, loader=lambda p: p)
    except (FileNotFoundError, RuntimeError) as e:
        raise FolderSourceError(f"--source {root}: {e}") from None
    return list(ds.classes), list(ds.samples)


def _resize_short(img: np.ndarray, short: int) -> np.ndarray:
    h, w = img.shape[:2]
    f = short / min(h, w)
    return cv2.resize(img, (max(short, round(w * f)), max(short, round(h * f))),
                      interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


@dataclass
class ImageFolderSource:
    root: str
    image_size: int = 64
    val_fraction: float = 0.1
    seed: int = 0
    flip: bool = True
    classes: List[str] = field(init=False)

    def __post_init__(self):
        if not os.path.isdir(self.root):
            raise FolderSourceError(f"--source {self.root!r} is not a directory")
        train, val = os.path.join(self.root, "train"), os.path.join(self.root, "val")
        if os.path.isdir(train) and os.path.isdir(val):
            self.classes, self.train = _scan(train)
            val_classes, self.val = _scan(val)
            if val_classes != self.classes:
                raise FolderSourceError(f"--source {self.root}: train/ has classes "
                                        f"{self.classes[:5]}..., val/ has {val_classes[:5]}...")
        else:
            if not 0 < self.val_fraction < 1:
                raise FolderSourceError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
            self.classes, samples = _scan(self.root)
            rng = np.random.default_rng(self.seed)
            self.train, self.val = [], []
            for label in range(len(self.classes)):
                mine = [s for s in samples if s[1] == label]
                order = rng.permutation(len(mine))
                n_val = max(1, round(len(mine) * self.val_fraction)) if len(mine) > 1 else 0
                self.val += [mine[i] for i in sorted(order[:n_val])]
                self.train += [mine[i] for i in sorted(order[n_val:])]
        if len(self.classes) < 2:
            raise FolderSourceError(f"--source {self.root}: need at least 2 class folders, "
                                    f"found {self.classes}")
        if not self.train or not self.val:
            raise FolderSourceError(f"--source {self.root}: {len(self.train)} training and "
                                    f"{len(self.val)} held-out images; need both")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {"source": os.path.abspath(self.root), "image_size": self.image_size,
                "num_train": len(self.train), "num_val": len(self.val),
                "num_classes": self.num_classes, "flip": self.flip}

    def train_item(self, position: int, rng_seed: int):
        """Sample ``position`` of the endless stream: epoch ``position // N`` visits the
        training images in a seeded permutation; the crop is seeded by the position."""
        n = len(self.train)
        epoch, offset = divmod(position, n)
        order = np.random.default_rng([rng_seed, epoch]).permutation(n)
        path, label = self.train[int(order[offset])]
        rng = np.random.default_rng([rng_seed, 1 << 20, position])
        img = _read_bgr(path)
        h, w = img.shape[:2]
        area = h * w * rng.uniform(0.25, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(min(w, round(np.sqrt(area * ratio))))
        ch = int(min(h, round(np.sqrt(area / ratio))))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (self.image_size, self.image_size),
                          interpolation=cv2.INTER_LINEAR)
        if self.flip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        return np.ascontiguousarray(crop), label

    def val_items(self):
        s = self.image_size
        for path, label in self.val:
            img = _resize_short(_read_bgr(path), s)
            h, w = img.shape[:2]
            y0, x0 = (h - s) // 2, (w - s) // 2
            yield np.ascontiguousarray(img[y0:y0 + s, x0:x0 + s]), label
