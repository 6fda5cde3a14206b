"""tools/export_model.py: the exported model, run in its own runtime (TorchScript in torch, ONNX
in onnxruntime), gives eager FocalRetinaNet's detections on built-in-style val images at two
input sizes (same count and classes, boxes within 1e-3 relative, scores within 1e-4), FL*'s
probabilities included, by tracing (both formats) and by scripting (TorchScript); the runner
script it writes works."""
import glob
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

import focal_det
from focal_det.data import ShapesSpec, ensure_generated
from tests.common import CONFIGS, REPO, run_child

pytestmark = pytest.mark.slow  # subprocesses / training runs (make test-slow)

CONFIG = os.path.join(CONFIGS, "builtin", "retinanet_R18_shapes.yaml")
TINY = ShapesSpec(num_train=2, num_val=2, image_size=64, max_objects=3, min_size=12, max_size=40)
LOSSES = {"fl": [], "flstar": ["MODEL.FOCAL_DET.CLS_LOSS.NAME", "FocalLossStar",
                               "MODEL.FOCAL_DET.CLS_LOSS.BETA", "1.0"],
          "efl": ["MODEL.FOCAL_DET.CLS_LOSS.NAME", "EqualizedFocalLoss"]}  # with buffers


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two val images at two sizes: as generated (64x64) and resized to 96x128."""
    folder = ensure_generated(TINY, root=str(tmp_path_factory.mktemp("export_data")))
    paths = sorted(glob.glob(os.path.join(folder, "val", "*.jpg")))
    bgr = [cv2.imread(p) for p in paths]
    return [bgr[0], cv2.resize(bgr[1], (128, 96))], paths[0]


def _model_and_weights(tmp_path, loss):
    cfg = focal_det.get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(LOSSES[loss])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # untrained, but with a spread of scores above the threshold
        model.head.cls_score.weight.mul_(30.0)
        model.head.cls_score.bias.fill_(-1.5 if loss == "flstar" else -2.0)
    path = tmp_path / f"{loss}.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, str(path)


def _export(fmt, weights, out, loss, method="tracing"):
    cmd = [sys.executable, "tools/export_model.py", "--config-file", CONFIG, "--format", fmt,
           "--export-method", method, "--output", str(out), "MODEL.WEIGHTS", weights,
           *LOSSES[loss]]
    run_child(cmd, timeout=600)


def _runtime(fmt, out, method):
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out / "model.onnx"))
        return lambda image: session.run(None, {"image": image.numpy()})[:3]
    model = torch.jit.load(str(out / "model.ts"))
    if method == "scripting":
        def run_scripted(image):
            with torch.no_grad():
                out = model([{"image": image}])[0]
            return [out[k].numpy() for k in ("pred_boxes", "pred_classes", "scores")]
        return run_scripted

    def run(image):
        with torch.no_grad():
            return [t.numpy() for t in model(image)[:3]]
    return run


# Loading TorchScript is what the torchscript case tests; torch deprecates the API.
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt,loss,method", [
    ("onnx", "fl", "tracing"), ("torchscript", "fl", "tracing"), ("onnx", "flstar", "tracing"),
    ("torchscript", "fl", "scripting"), ("torchscript", "flstar", "scripting"),
    ("onnx", "efl", "tracing"), ("torchscript", "efl", "scripting")])
def test_exported_model_gives_the_eager_detections(fmt, loss, method, images, tmp_path):
    model, weights = _model_and_weights(tmp_path, loss)
    out = tmp_path / "exported"
    _export(fmt, weights, out, loss, method)
    run = _runtime(fmt, out, method)
    for bgr in images[0]:
        image = torch.as_tensor(bgr.transpose(2, 0, 1).astype("float32"))
        with torch.no_grad():
            eager = model([{"image": image}])[0]["instances"]
        boxes, classes, scores = run(image)
        assert 0 < len(eager) == len(scores), (len(eager), len(scores))
        np.testing.assert_array_equal(classes, eager.pred_classes.numpy())
        np.testing.assert_allclose(boxes, eager.pred_boxes.tensor.numpy(), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(scores, eager.scores.numpy(), rtol=0, atol=1e-4)
    if loss == "flstar":  # the scores really are FL*'s sigmoid(gamma x + beta), not sigmoid(x)
        assert model.cls_loss.gamma == 2.0 and model.cls_loss.beta == 1.0


@pytest.mark.parametrize("fmt,method", [("onnx", "tracing"), ("torchscript", "scripting")])
def test_runner_script_prints_detections(fmt, method, images, tmp_path):
    _, weights = _model_and_weights(tmp_path, "fl")
    out = tmp_path / "exported"
    _export(fmt, weights, out, "fl", method)
    proc = run_child([sys.executable, str(out / "run_model.py"), images[1]], timeout=300)
    assert "detections" in proc.stdout and "[" in proc.stdout, proc.stdout


def test_onnx_scripting_and_missing_weights_are_clear_errors(tmp_path):
    for fmt, extra, match in (
            ("onnx", ["--export-method", "scripting", "MODEL.WEIGHTS", "x.pth"],
             "works with --format torchscript only"),
            ("torchscript", [], "MODEL.WEIGHTS is empty")):
        proc = subprocess.run([sys.executable, "tools/export_model.py", "--config-file", CONFIG,
                               "--format", fmt, "--output", str(tmp_path), *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and match in proc.stderr and "Traceback" not in proc.stderr
