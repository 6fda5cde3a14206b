"""Bad data: unreadable images name the file and dataset; degenerate and outside boxes are
dropped/clipped with one counting warning; empty, grayscale and extreme-aspect images train."""
import logging
import math

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from focal_det import engine
from focal_det.data.checks import ImageReadError, sanitize_boxes
from tests.common import SHAPES_CONFIG, Records

NAME = "focal_det_test_bad_data"


def _register(dicts):
    if NAME in DatasetCatalog.list():
        DatasetCatalog.remove(NAME)
        MetadataCatalog.remove(NAME)
    DatasetCatalog.register(NAME, lambda: dicts)
    MetadataCatalog.get(NAME).set(thing_classes=["a", "b", "c", "d"])


def _image(path, h, w, gray=False):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return {"file_name": str(path), "height": h, "width": w, "image_id": str(path)}


def _box(x0, y0, x1, y1, c=0):
    return {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": c}


def _cfg_args(out):
    argv = ["--config-file", SHAPES_CONFIG,
            "OUTPUT_DIR", str(out), "DATASETS.TRAIN", f"('{NAME}',)", "DATASETS.TEST", "()",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "256", "TEST.EVAL_PERIOD",
            "0", "SOLVER.CHECKPOINT_PERIOD", "1000"]
    return engine.get_parser().parse_args(argv)


def test_sanitize_counts_drops_and_clips_once():
    dicts = [{"file_name": "x.jpg", "height": 50, "width": 60, "annotations": [
        _box(10, 10, 10, 30), _box(5, 5, 2, 9), _box(-5, 10, 20, 80), _box(70, 70, 90, 90),
        _box(1, 1, 20, 20)]}]
    collect = Records()  # our loggers may not propagate to root (Detectron2's setup_logger)
    logging.getLogger("focal_det.data.checks").addHandler(collect)
    try:
        out = sanitize_boxes(dicts, ["ds"])
    finally:
        logging.getLogger("focal_det.data.checks").removeHandler(collect)
    boxes = [a["bbox"] for a in out[0]["annotations"]]
    assert boxes == [[0.0, 10, 20, 50], [1, 1, 20, 20]]
    warnings = [r for r in collect.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1
    assert "dropped 3 box(es)" in warnings[0].getMessage()
    assert "clipped 1 box(es)" in warnings[0].getMessage()


def test_missing_and_corrupt_images_name_the_file_and_dataset(tmp_path):
    good = _image(tmp_path / "good.png", 64, 64)
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg")
    for bad in ("missing.jpg", "corrupt.jpg"):
        d = dict(good, file_name=str(tmp_path / bad), annotations=[_box(1, 1, 20, 20)])
        _register([d, d])
        with pytest.raises(ImageReadError, match=f"{bad}.*{NAME}"):
            engine.main(_cfg_args(tmp_path / "out"))


def test_empty_grayscale_extreme_aspect_and_degenerate_boxes_train(tmp_path):
    dicts = [
        dict(_image(tmp_path / "empty.png", 64, 80), annotations=[]),
        dict(_image(tmp_path / "gray.png", 70, 64, gray=True), annotations=[_box(5, 5, 40, 30, 1)]),
        dict(_image(tmp_path / "wide.png", 16, 400), annotations=[_box(10, 2, 60, 14, 2)]),
        dict(_image(tmp_path / "tall.png", 300, 20), annotations=[_box(2, 10, 18, 80, 3),
                                                                  _box(5, 5, 5, 50, 0)]),
    ]
    _register(dicts)
    args = _cfg_args(tmp_path / "out")
    cfg = engine.setup(args)
    trainer = engine.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for k, v in trainer.storage.histories().items() if k.startswith("loss_")]
    assert losses and all(math.isfinite(h.latest()) for h in losses)
