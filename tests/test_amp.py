"""Mixed precision on the CPU: SOLVER.AMP.ENABLED trains under bf16 autocast (Detectron2's
AMPTrainer asserts CUDA), resumes exactly, and the precision is checked before any work;
inference under autocast keeps its post-processing in float32."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_det import engine
from focal_det.data import ShapesSpec, ensure_generated
from focal_det.engine.amp import FocalAMPTrainer
from focal_det.modeling.fold import FoldedNormConv2d
from focal_det.modeling.mixed import guard_cpu_bf16_convs
from focal_det.predictor import Predictor
from focal_det.precision import PrecisionError, resolve
from tests.common import CONFIGS, Records, get_tiny_cfg, random_batch

TINY = ShapesSpec(num_train=8, num_val=2, image_size=64, max_objects=4, min_size=12,
                  max_size=40)
NAMES = ("focal_det_amp_train", "focal_det_amp_val")


def test_precision_names_and_devices():
    assert resolve("auto", "cpu", key="K") == torch.bfloat16
    assert resolve("bfloat16", "cpu", key="K") == torch.bfloat16
    assert resolve("float32", "cpu", key="K") is None
    assert resolve("auto", "cuda", key="K") == torch.float16
    with pytest.raises(PrecisionError, match="K=float16 needs a CUDA device"):
        resolve("float16", "cpu", key="K")
    with pytest.raises(PrecisionError, match="K='half' is not one of"):
        resolve("half", "cpu", key="K")


def test_bf16_inference_decodes_in_float32_and_matches_float32():
    torch.manual_seed(0)
    model = build_model(get_tiny_cfg()).eval()
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in random_batch(2)]
    seen = []
    model.head.cls_score.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad():
        ref = model(batch)
        model.inference_precision = "bfloat16"
        out = model(batch)
    assert seen == [torch.float32] * 5 + [torch.bfloat16] * 5  # 5 levels, each run
    folded = [m._fold_cache for m in model.modules() if type(m) is FoldedNormConv2d]
    assert folded and all(w.dtype == b.dtype == torch.float32 for _, w, b in folded)
    for a, b in zip(ref, out):
        a, b = a["instances"], b["instances"]
        assert b.scores.dtype == torch.float32 and b.pred_boxes.tensor.dtype == torch.float32
        n = min(len(a), len(b), 20)
        assert n > 0
        torch.testing.assert_close(b.scores[:n], a.scores[:n], atol=0.02, rtol=0)


def test_predictor_and_the_demo_take_the_inference_precision():
    """Predictor (and so demo.py) builds the model from the config: the key reaches it."""
    from focal_det import demo

    args = demo.get_parser().parse_args([
        "--config-file", os.path.join(CONFIGS, "builtin", "retinanet_R18_shapes.yaml"),
        "--input", "x.png", "--opts", "MODEL.WEIGHTS", "",
        "MODEL.FOCAL_DET.INFERENCE_PRECISION", "bfloat16"])
    predictor = Predictor(demo.setup_cfg(args))
    assert predictor.model.inference_precision == "bfloat16"
    out = predictor(np.zeros((64, 64, 3), np.uint8))["instances"]
    assert out.scores.dtype == torch.float32


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    folder = ensure_generated(TINY, root=str(tmp_path_factory.mktemp("data")))
    for name, split in zip(NAMES, ("train", "val")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, os.path.join(folder, f"{split}.json"), folder)
    return folder


def _args(out, *extra, max_iter=4, opts=()):
    argv = ["--config-file", os.path.join(CONFIGS, "builtin", "retinanet_R18_shapes.yaml"),
            *extra, "OUTPUT_DIR", str(out), "DATASETS.TRAIN", f"('{NAMES[0]}',)",
            "DATASETS.TEST", "()", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
            "DATALOADER.NUM_WORKERS", "0", "SEED", "3", "SOLVER.AMP.ENABLED", "True", *opts]
    return engine.get_parser().parse_args(argv)


def _train(args, resume=False):
    trainer = engine.Trainer(engine.setup(args))
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


@pytest.mark.slow
def test_cpu_amp_trains_in_bf16_and_resumes_exactly(tiny_dataset, tmp_path):
    ref = tmp_path / "straight"
    trainer = _train(_args(ref))
    assert type(trainer._trainer) is FocalAMPTrainer
    assert trainer._trainer.precision == torch.bfloat16
    seen = []
    trainer.model.head.cls_score.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with EventStorage(trainer.iter):
        trainer._trainer.run_step()  # one more step: the head runs in bf16
    assert set(seen) == {torch.bfloat16}
    losses = [json.loads(line)["total_loss"] for line in open(ref / "metrics.json")
              if "total_loss" in line]
    assert len(losses) >= 1 and all(torch.isfinite(torch.tensor(losses)))

    # Stop after the iteration-2 checkpoint, resume: the same weights, bit for bit.
    out = tmp_path / "resumed"
    _train(_args(out, max_iter=2))
    os.remove(out / "model_final.pth")
    (out / "last_checkpoint").write_text("model_0000001.pth")
    resumed = _train(_args(out, "--resume"), resume=True)
    assert resumed.start_iter == 2
    a = torch.load(ref / "model_final.pth", weights_only=True)["model"]
    b = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_precision_the_device_cannot_run_is_refused_before_any_work(tiny_dataset, tmp_path):
    args = _args(tmp_path / "x", opts=["SOLVER.AMP.PRECISION", "float16"])
    with pytest.raises(PrecisionError, match="SOLVER.AMP.PRECISION=float16 needs a CUDA"):
        engine.preflight(args)
    args = _args(tmp_path / "x", opts=["MODEL.FOCAL_DET.INFERENCE_PRECISION", "fp8"])
    with pytest.raises(PrecisionError, match="INFERENCE_PRECISION='fp8'"):
        engine.preflight(args)
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("height", [1, 2, 8])
def test_width_one_inputs_of_strided_convs_get_exact_bf16_gradients(stride, height):
    """The guard against oneDNN's bf16 weight-gradient defect (width-1 input, stride > 1):
    same output shape, gradients within bf16 rounding of float32's."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, stride, 1).to(memory_format=torch.channels_last)
    ref = torch.nn.Conv2d(16, 32, 3, stride, 1)
    ref.load_state_dict(conv.state_dict())
    assert guard_cpu_bf16_convs(conv) == 1
    x = torch.randn(2, 16, height, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().sum().backward()
    y_ref = ref(x)
    y_ref.sum().backward()
    assert y.shape == y_ref.shape
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, atol=0.1, rtol=0.02)
    torch.testing.assert_close(y.float(), y_ref, atol=0.05, rtol=0.02)


def test_bf16_on_a_cpu_without_bf16_units_runs_with_one_warning(monkeypatch):
    import logging

    import focal_det.precision as precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    precision._warn_slow_bf16.cache_clear()
    records = Records()
    logging.getLogger("focal_det").addHandler(records)
    try:
        assert resolve("bfloat16", "cpu", key="K") == torch.bfloat16
        assert resolve("auto", "cpu", key="K") == torch.bfloat16
    finally:
        logging.getLogger("focal_det").removeHandler(records)
    warnings = [r for r in records.records if "without bf16 instructions" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    precision._warn_slow_bf16.cache_clear()


def test_the_accuracy_report_reads_finished_runs(tmp_path):
    from focal_det.analysis.amp_accuracy import collect

    for name, ap in (("fp32", 50.0), ("bf16", 49.5)):
        os.makedirs(tmp_path / name)
        rows = [{"iteration": 9, "total_loss": 1.0},
                {"iteration": 9, "bbox/AP": ap, "bbox/AP50": 70.0}]
        (tmp_path / name / "metrics.json").write_text("\n".join(map(json.dumps, rows)) + "\n")
    os.makedirs(tmp_path / "fp32_eval_bf16")
    (tmp_path / "fp32_eval_bf16" / "log.txt").write_text(
        "copypaste: AP,AP50,AP75\ncopypaste: 50.2000,70.1000,60.0000,1,2,nan\n")
    res = collect(str(tmp_path))
    assert res["bf16_training_minus_fp32_AP"] == pytest.approx(-0.5)
    assert res["bf16_evaluation_minus_fp32_AP"] == pytest.approx(0.2)
    with pytest.raises(FileNotFoundError, match="bf16"):
        os.remove(tmp_path / "bf16" / "metrics.json")
        collect(str(tmp_path))
