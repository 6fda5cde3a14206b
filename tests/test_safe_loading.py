"""No entry point runs code from a checkpoint: a crafted .pkl and a crafted .pth (whose
unpickling would create a marker file) are refused with UnsafeCheckpointError naming the file,
by train_net.py (train, --resume, --eval-only), demo.py, tools/loss_distribution.py,
tools/export_model.py and focal_det.Predictor, each in its own process. Legitimate .pth and .pkl files still load."""
import os
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from focal_det.data import ShapesSpec, ensure_generated
from tests.common import REPO, SHAPES_CONFIG as CONFIG, CodeOnLoad, tiny_run_opts

TINY = ShapesSpec(num_train=4, num_val=2, image_size=64, max_objects=3, min_size=12,
                  max_size=40)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe")
    folder = ensure_generated(TINY, root=str(root))
    image = os.path.join(str(root), "image.png")
    cv2.imwrite(image, np.full((64, 64, 3), 127, np.uint8))
    return folder, image


def _crafted(tmp_path, suffix):
    marker = tmp_path / f"code_ran_{suffix}"
    path = tmp_path / f"evil.{suffix}"
    payload = {"model": {"w": CodeOnLoad(str(marker))}, "__author__": "x"}
    with open(path, "wb") as f:
        if suffix == "pkl":
            pickle.dump(payload, f)
        else:
            torch.save(payload, f)
    return str(path), marker


def _data_opts(folder, out):
    return [
        "OUTPUT_DIR", str(out), "DATASETS.TRAIN", "('safe_train',)",
        "DATASETS.TEST", "('safe_val',)", "SOLVER.MAX_ITER", "2", *tiny_run_opts(),
    ]


def _register(folder):
    return ["--register-coco", "safe_train", os.path.join(folder, "train.json"), folder,
            "--register-coco", "safe_val", os.path.join(folder, "val.json"), folder]


def _command(entry, weights, folder, image, out):
    py = sys.executable
    if entry == "train":
        return [py, "train_net.py", "--config-file", CONFIG, *_register(folder),
                *_data_opts(folder, out), "MODEL.WEIGHTS", weights]
    if entry == "resume":
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "last_checkpoint"), "w") as f:
            f.write(os.path.basename(weights))
        os.replace(weights, os.path.join(out, os.path.basename(weights)))
        return [py, "train_net.py", "--config-file", CONFIG, "--resume", *_register(folder),
                *_data_opts(folder, out)]
    if entry == "eval_only":
        return [py, "train_net.py", "--config-file", CONFIG, "--eval-only", *_register(folder),
                *_data_opts(folder, out), "MODEL.WEIGHTS", weights]
    if entry == "demo":
        return [py, "demo.py", "--config-file", CONFIG, "--input", image, "--output", str(out),
                "--opts", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]
    if entry == "loss_distribution":
        return [py, "tools/loss_distribution.py", "--config-file", CONFIG, "--weights", weights,
                "--output", str(out), "--dataset", "focal_det_shapes_val"]
    if entry == "easy_negatives":
        return [py, "tools/easy_negatives.py", "--config-file", CONFIG, "--model",
                f"m={weights}", "--output", str(out), "--dataset", "focal_det_shapes_val"]
    if entry == "export_scripting":
        return [py, "tools/export_model.py", "--config-file", CONFIG, "--format", "torchscript",
                "--export-method", "scripting", "--output", str(out), "MODEL.WEIGHTS", weights]
    if entry == "export":
        return [py, "tools/export_model.py", "--config-file", CONFIG, "--format", "onnx",
                "--output", str(out), "MODEL.WEIGHTS", weights]
    if entry == "predictor":
        code = ("import focal_det; cfg = focal_det.get_cfg(); "
                f"cfg.merge_from_file({CONFIG!r}); cfg.MODEL.WEIGHTS = {weights!r}; "
                "focal_det.Predictor(cfg)")
        return [py, "-c", code]
    raise ValueError(entry)


ENTRIES = ["train", "resume", "eval_only", "demo", "loss_distribution", "easy_negatives",
           "export", "export_scripting", "predictor"]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["pkl", "pth"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_crafted_checkpoint_runs_nothing_at_any_entry_point(entry, suffix, data, tmp_path):
    folder, image = data
    weights, marker = _crafted(tmp_path, suffix)
    cmd = _command(entry, weights, folder, image, tmp_path / "out")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path)})
    output = proc.stdout + proc.stderr
    assert not marker.exists(), f"code from the checkpoint ran:\n{output}"
    assert proc.returncode != 0, output
    assert "UnsafeCheckpointError" in output or "refusing to load" in output, output
    assert os.path.basename(weights) in output, output


@pytest.mark.slow
def test_legitimate_pth_and_pkl_load_in_predictor(tmp_path):
    import focal_det
    from detectron2.modeling import build_model

    from focal_det.checkpoint import numpy_state

    cfg = focal_det.get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(5)
    src = build_model(cfg)
    pth, pkl = tmp_path / "model.pth", tmp_path / "model.pkl"
    torch.save({"model": src.state_dict()}, pth)
    with open(pkl, "wb") as f:
        pickle.dump({"model": numpy_state(src), "__author__": "test"}, f)
    key = "head.cls_score.weight"
    for path in (pth, pkl):
        cfg.MODEL.WEIGHTS = str(path)
        predictor = focal_det.Predictor(cfg)
        assert torch.equal(predictor.model.state_dict()[key], src.state_dict()[key])
        out = predictor(np.full((64, 64, 3), 127, np.uint8))
        assert "instances" in out
