"""Bad input is found before any work, named in one message: devices, datasets (TRAIN and TEST),
weights for another number of classes, files that are not checkpoints; files follow the umask."""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from focal_det.checkpoint import (
    ClassCountMismatchError,
    FocalCheckpointer,
    NotACheckpointError,
    UnsafeCheckpointError,
)
from focal_det.data import ShapesSpec, ensure_generated
from focal_det.preflight import PreflightError, check_datasets, check_device
from tests.common import CONFIGS, REPO, CodeOnLoad, Records, get_tiny_cfg, register_coco

TINY = ShapesSpec(num_train=4, num_val=3, image_size=64, max_objects=3, min_size=12, max_size=40)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return ensure_generated(TINY, root=str(tmp_path_factory.mktemp("pre")))


def _dataset(tmp_path, shapes, edit=None, raw=None, name="pre_check"):
    """Register a copy of the tiny val split, optionally edited, under ``name``."""
    with open(os.path.join(shapes, "val.json")) as f:
        coco = json.load(f)
    if edit:
        edit(coco)
    path = tmp_path / "val.json"
    path.write_text(raw if raw is not None else json.dumps(coco))
    register_coco(name, str(path), shapes)
    return name, str(path)


def test_sound_dataset_passes(tmp_path, shapes):
    check_datasets([_dataset(tmp_path, shapes)[0]])


@pytest.mark.parametrize("edit,raw,match", [
    (None, "{not json", "is not valid json"),
    (lambda c: c.pop("categories"), None, r"has no \['categories'\]"),
    (lambda c: c["annotations"][0].update(category_id=99), None,
     "1 annotation.* category ids not in its 'categories': 99"),
    (lambda c: c["images"][0].update(file_name="val/nowhere.png"), None,
     "1 of 3 image.* are not in .*: val/nowhere.png"),
])
def test_bad_dataset_is_one_message_naming_the_file(tmp_path, shapes, edit, raw, match):
    name, path = _dataset(tmp_path, shapes, edit=edit, raw=raw)
    with pytest.raises(PreflightError, match=match) as e:
        check_datasets([name])
    assert path in str(e.value) and name in str(e.value)


def test_missing_json_names_file_and_where_datasets_live(tmp_path, shapes, monkeypatch):
    name, path = _dataset(tmp_path, shapes)
    os.unlink(path)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2data"))
    with pytest.raises(PreflightError, match="does not exist.*DETECTRON2_DATASETS is .*d2data"):
        check_datasets([name])
    with pytest.raises(PreflightError, match="'nope' is not registered"):
        check_datasets(["nope"])


def test_bad_boxes_are_one_warning_with_counts(tmp_path, shapes):
    def edit(coco):
        coco["annotations"][0]["bbox"][2] = -5  # negative width
        coco["annotations"][1]["bbox"][0] = -10  # outside the image
    name, _ = _dataset(tmp_path, shapes, edit=edit)
    # A handler on the logger itself: Detectron2's setup_logger (run by other tests) turns
    # off propagation of "focal_det", which pytest's caplog relies on.
    handler, log = Records(), logging.getLogger("focal_det.preflight")
    log.addHandler(handler)
    try:
        check_datasets([name])
    finally:
        log.removeHandler(handler)
    warnings = [r.getMessage() for r in handler.records]
    assert len(warnings) == 1 and "1 box(es) with no area" in warnings[0]
    assert "1 box(es) reaching outside" in warnings[0]


def test_device_checks_name_the_cpu_alternative(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PreflightError, match="MODEL.DEVICE='cuda'.*MODEL.DEVICE cpu"):
        check_device("cuda", 1)
    with pytest.raises(PreflightError, match="--num-gpus 2: this machine has no CUDA GPU"):
        check_device("cpu", 2)
    check_device("cpu", 1)


def _train_net(*argv, env=None):
    proc = subprocess.run([sys.executable, "train_net.py", *argv], cwd=REPO, text=True,
                          capture_output=True, timeout=300, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_paper_config_without_coco_or_cuda_says_so_without_traceback(tmp_path):
    config = os.path.join(CONFIGS, "retinanet_R50_FPN_1x.yaml")
    env = {"DETECTRON2_DATASETS": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    rc, out = _train_net("--config-file", config, "MODEL.DEVICE", "cpu",
                         "OUTPUT_DIR", str(tmp_path / "out"), env=env)
    assert rc != 0 and "Traceback" not in out, out
    assert "instances_val2017.json does not exist" in out and "datasets/README.md" in out, out
    assert f"DETECTRON2_DATASETS is {str(tmp_path)!r}" in out, out
    assert not (tmp_path / "out").exists()  # nothing written
    rc, out = _train_net("--config-file", config, env=env)
    assert rc != 0 and "Traceback" not in out and "MODEL.DEVICE cpu" in out, out
    rc, out = _train_net("--config-file", config, "--num-gpus", "2", env=env)
    assert rc != 0 and "Traceback" not in out and "--num-gpus 2" in out, out


def _save(model, path):
    torch.save({"model": model.state_dict()}, path)


def test_weights_for_another_class_count_are_refused_for_evaluation(tmp_path):
    other = build_model(get_tiny_cfg(num_classes=7))
    _save(other, tmp_path / "seven.pth")
    model = build_model(get_tiny_cfg(num_classes=3))
    with pytest.raises(ClassCountMismatchError, match="trained for 7 classes.*NUM_CLASSES is 3"):
        FocalCheckpointer(model, require_same_classes=True).load(str(tmp_path / "seven.pth"))
    FocalCheckpointer(model).load(str(tmp_path / "seven.pth"))  # fine-tuning: allowed


@pytest.mark.parametrize("suffix", ["pth", "pkl"])
def test_a_file_that_is_no_checkpoint_is_called_that(tmp_path, suffix):
    path = tmp_path / f"notes.{suffix}"
    path.write_text("these are my notes, not weights\n")
    model = build_model(get_tiny_cfg())
    with pytest.raises(NotACheckpointError, match="not a .*checkpoint") as e:
        FocalCheckpointer(model).load(str(path))
    assert "weights_only=False" not in str(e.value) and "unsafe" not in str(e.value).lower()


def test_unsafe_message_does_not_suggest_weights_only_false(tmp_path):
    torch.save({"model": {"w": CodeOnLoad(str(tmp_path / "ran"))}}, tmp_path / "evil.pth")
    model = build_model(get_tiny_cfg())
    with pytest.raises(UnsafeCheckpointError, match="refusing to load, it asks for") as e:
        FocalCheckpointer(model).load(str(tmp_path / "evil.pth"))
    assert "weights_only=False" not in str(e.value) and not (tmp_path / "ran").exists()


def test_checkpoints_and_generated_data_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        model = build_model(get_tiny_cfg())
        FocalCheckpointer(model, save_dir=str(tmp_path)).save("model_x")
        folder = ensure_generated(TINY, root=str(tmp_path / "gen"))
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "model_x.pth").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(tmp_path / "last_checkpoint").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(folder).st_mode & 0o777) == oct(0o755)
    shutil.rmtree(folder)
