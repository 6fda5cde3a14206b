"""Helpers shared by the tests: tiny configs built exactly as train_net.py's setup() does, the
overrides and the generated data of a run that takes seconds, (re-)registering a dataset, a
pickle that runs code when it is loaded, a handler that keeps log records, loading a script of
tools/ as a module, and running a child process with a timeout."""
import importlib.util
import logging
import os
import subprocess
import sys
from typing import List

import torch
from detectron2.structures import Boxes, Instances

import focal_det
from focal_det.data import ShapesSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
SHAPES_CONFIG = os.path.join(CONFIGS, "builtin", "retinanet_R18_shapes.yaml")

# A generated dataset that a few training iterations and an evaluation read in seconds.
TINY_SHAPES = ShapesSpec(num_train=8, num_val=4, image_size=64, max_objects=4, min_size=12,
                         max_size=40)


def tiny_run_opts(batch: int = 2, workers: int = 0, channels: int = 0) -> List[str]:
    """The overrides that make a run of a built-in config take seconds on CPU: 64 px images in
    training and test, ``batch`` images a step, ``workers`` data-loading processes and
    (``channels`` > 0) that many FPN channels."""
    return ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
            "SOLVER.IMS_PER_BATCH", str(batch), "DATALOADER.NUM_WORKERS", str(workers),
            *(["MODEL.FPN.OUT_CHANNELS", str(channels)] if channels else [])]


def tiny_shapes_datasets(root: str, prefix: str) -> str:
    """TINY_SHAPES generated under ``root`` and registered as ``PREFIX_train`` / ``PREFIX_val``;
    returns the data folder."""
    from focal_det.data import ensure_generated

    folder = ensure_generated(TINY_SHAPES, root=root)
    for split in ("train", "val"):
        register_coco(f"{prefix}_{split}", os.path.join(folder, f"{split}.json"), folder)
    return folder


def register_coco(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format dataset as ``name``, replacing one registered before under that
    name (by another test of this process)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, image_root)


class CodeOnLoad:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, so the file's existence
    proves that loading ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Records(logging.Handler):
    """Keeps the records of WARNING and above (``logger.addHandler(Records())``)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def get_tiny_cfg(num_classes: int = 3, base: str = "Base-FocalRetinaNet.yaml"):
    """A RetinaNet R18-FPN with 32 channels and 2 head convs: same structure, seconds on CPU."""
    cfg = focal_det.get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, base))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RETINANET.NUM_CONVS = 2
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 128
    return cfg


def random_batch(num_images=2, num_classes=3, size=(96, 128), boxes_per_image=4, seed=0,
                 empty=False):
    """Images (3, H, W) in [0, 255] with random GT boxes; `empty` gives images with no boxes."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for _ in range(num_images):
        image = torch.rand(3, h, w, generator=g) * 255
        n = 0 if empty else boxes_per_image
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 8
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch


def load_script(relpath: str):
    """A script of the repository (e.g. ``tools/ablate.py``) as a module, without putting its
    folder on sys.path (the scripts import only the library)."""
    name = "script_" + os.path.splitext(relpath)[0].replace(os.sep, "_").replace("/", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_child(cmd, timeout: float = 600, check: bool = True, **kwargs):
    """Run ``cmd`` with a hard ``timeout``; its stdout and stderr are captured together and, on
    a non-zero exit (when ``check``) or a timeout, shown in the assertion message. Returns the
    CompletedProcess (``.stdout`` holds both streams)."""
    kwargs.setdefault("cwd", REPO)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        raise AssertionError(f"{cmd} did not finish in {timeout} s; its output:\n{out}")
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}; its output:\n{proc.stdout}")
    return proc
