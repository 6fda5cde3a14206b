#!/usr/bin/env python
"""Export a trained FocalRetinaNet to TorchScript or ONNX (as Detectron2's
tools/deploy/export_model.py), with a small script that runs the exported model.

    python tools/export_model.py --config-file configs/builtin/retinanet_R18_shapes.yaml \\
        --format onnx --output exported/ MODEL.WEIGHTS output/demo/model_final.pth
    python exported/run_model.py some_image.jpg

Weights load through FocalCheckpointer (no code runs from them; weights for another number of
classes are refused). The export traces the model with Detectron2's ``TracingAdapter``: the
exported graph takes one image, (3, H, W) float32 in ``INPUT.FORMAT`` channel order, already
resized as Detectron2's ``DefaultPredictor`` does (``run_model.py`` shows how), any H and W;
it returns boxes (N, 4) in that image's pixels, classes (N,) int64, scores (N,) and the image
size. Everything after the network (the loss's probabilities, e.g. FL*'s
sigmoid(gamma x + beta), top-k, box decoding, NMS) is in the graph. ONNX uses opset 17 and
runs in onnxruntime; TorchScript needs torch and torchvision (for its NMS op) to run.

``--format torchscript --export-method scripting`` scripts the model instead
(``focal_det.modeling.scripting``, Detectron2's ``scripting_with_instances``): the model takes
``[{"image": (3, H, W) float32}]`` (a list, any number of images) and returns one dict per image
with ``pred_boxes``, ``scores``, ``pred_classes``; normalization layers are folded into the
convolutions. ONNX export is by tracing only (as in Detectron2).
"""
import argparse
import os
import warnings

import focal_det  # noqa: F401  (first: it imports fvcore/Detectron2 without their warnings)
import torch
from detectron2.export import TracingAdapter

from focal_det import cli
from focal_det.checkpoint import FocalCheckpointer
from focal_det.errors import FocalDetError
from focal_det.inference import inference_spec

OUTPUT_NAMES = ["boxes", "classes", "scores", "image_size"]  # TracingAdapter's flat order
OPSET = 17

RUNNER = '''#!/usr/bin/env python
"""Run the exported focal_det model on images: python run_model.py IMAGE [IMAGE ...]"""
import sys

import cv2
import numpy as np
{imports}
MIN_SIZE, MAX_SIZE, FORMAT = {min_size}, {max_size}, {input_format!r}
CLASSES = {classes!r}


def preprocess(bgr):
    """Detectron2's DefaultPredictor: shortest edge to MIN_SIZE, longest at most MAX_SIZE."""
    h, w = bgr.shape[:2]
    scale = MIN_SIZE / min(h, w)
    if max(h, w) * scale > MAX_SIZE:
        scale = MAX_SIZE / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    image = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if FORMAT == "RGB":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image.transpose(2, 0, 1).astype("float32")), (w / nw, h / nh)


{load}
for path in sys.argv[1:]:
    bgr = cv2.imread(path)
    if bgr is None:
        sys.exit(f"{{path}}: not a readable image")
    image, (sx, sy) = preprocess(bgr)
    boxes, classes, scores = run(image)
    boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)  # back to the input's pixels
    print(f"{{path}}: {{len(scores)}} detections")
    for b, c, s in zip(boxes, classes, scores):
        name = CLASSES[c] if c < len(CLASSES) else str(c)
        print(f"  {{name:>12}} {{s:.3f}}  [{{b[0]:.1f}}, {{b[1]:.1f}}, {{b[2]:.1f}}, {{b[3]:.1f}}]")
'''

RUNTIMES = {
    "onnx": ("import onnxruntime as ort\n",
             'session = ort.InferenceSession(sys.path[0] + "/model.onnx")\n\n\n'
             "def run(image):\n"
             '    boxes, classes, scores, _ = session.run(None, {"image": image})\n'
             "    return boxes, classes, scores\n"),
    "torchscript": ("import torch\nimport torchvision  # noqa: F401  (registers its NMS op)\n",
                    'model = torch.jit.load(sys.path[0] + "/model.ts")\n\n\n'
                    "def run(image):\n"
                    "    with torch.no_grad():\n"
                    "        boxes, classes, scores, _ = model(torch.from_numpy(image))\n"
                    "    return boxes.numpy(), classes.numpy(), scores.numpy()\n"),
    "torchscript-scripted": (
        "import torch\nimport torchvision  # noqa: F401  (registers its NMS op)\n",
        'model = torch.jit.load(sys.path[0] + "/model.ts")\n\n\n'
        "def run(image):\n"
        "    with torch.no_grad():\n"
        '        out = model([{"image": torch.from_numpy(image)}])[0]\n'
        '    return (out["pred_boxes"].numpy(), out["pred_classes"].numpy(),\n'
        '            out["scores"].numpy())\n'),
}


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--export-method", choices=["tracing", "scripting"], default="tracing")
    p.add_argument("--output", required=True, help="folder for the model and run_model.py")
    cli.add_config_args(p)  # overrides: MODEL.WEIGHTS w.pth (.yaml), train.init_checkpoint=w.pth
    return p


def load_model(cfg):
    spec = inference_spec(cfg)
    if not spec.weights:
        raise FocalDetError(f"{spec.weights_key} is empty: give the trained weights to export")
    model = spec.build_model()
    FocalCheckpointer(model, require_same_classes=True).load(spec.weights)
    return model


def trace_adapter(model, cfg):
    """TracingAdapter around ``model`` with a sample image of the test size (the graph is
    not specialized to it)."""
    size = inference_spec(cfg).min_size
    sample = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    return TracingAdapter(model, [{"image": sample}]).eval()


def export(cfg, fmt: str, out_dir: str, method: str = "tracing") -> str:
    model = load_model(cfg)
    os.makedirs(out_dir, exist_ok=True)
    if method == "scripting":
        from focal_det.modeling.scripting import script_for_export

        path = os.path.join(out_dir, "model.ts")
        script_for_export(model).save(path)
        write_runner(cfg, "torchscript-scripted", out_dir)
        return path
    adapter = trace_adapter(model, cfg)
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing Detectron2's and torchvision's code warns about its Python control flow; the
        # exported graphs are checked against eager mode at several sizes (tests/test_export.py).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "onnx":
            path = os.path.join(out_dir, "model.onnx")
            torch.onnx.export(adapter, adapter.flattened_inputs, path, dynamo=False,
                              opset_version=OPSET, input_names=["image"],
                              output_names=OUTPUT_NAMES,
                              dynamic_axes={"image": {1: "height", 2: "width"},
                                            **{n: {0: "detections"} for n in OUTPUT_NAMES[:3]}})
        else:
            path = os.path.join(out_dir, "model.ts")
            torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False).save(path)
    write_runner(cfg, fmt, out_dir)
    return path


def write_runner(cfg, fmt: str, out_dir: str) -> None:
    from detectron2.data import MetadataCatalog

    spec = inference_spec(cfg)
    classes = []
    if spec.test_dataset:
        classes = list(MetadataCatalog.get(spec.test_dataset).get("thing_classes", []))
    imports, load = RUNTIMES[fmt]
    text = RUNNER.format(imports=imports, load=load, min_size=spec.min_size,
                         max_size=spec.max_size, input_format=spec.input_format,
                         classes=classes)
    with open(os.path.join(out_dir, "run_model.py"), "w") as f:
        f.write(text)


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.export_method == "scripting" and args.format != "torchscript":
        raise FocalDetError(f"--export-method scripting works with --format torchscript only "
                            f"(got --format {args.format}); ONNX export is by tracing")
    cfg = cli.load_config(args.config_file, args.opts)
    path = export(cfg, args.format, args.output, args.export_method)
    print(f"Exported {path}; run it with: python {os.path.join(args.output, 'run_model.py')} "
          "IMAGE")
    return path


if __name__ == "__main__":
    cli.run_tool(main, "export_model.py")
