"""Equalized Focal Loss through focal_det's Trainer (slow: training runs): the step hook is
installed for .yaml configs, it trains under bf16 autocast, an interrupted and resumed run ends
with bit-identical weights and statistics, and two gloo processes hold the statistics (and
weights) of one process on the combined batch."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from focal_det import engine
from focal_det.data import ShapesSpec, ensure_generated
from focal_det.engine.amp import FocalAMPTrainer
from focal_det.engine.launcher import free_port
from tests.common import CONFIGS
from tests.test_distributed import _train as _ddp_train
from tests.test_distributed import _worker as _ddp_worker

pytestmark = pytest.mark.slow

EFL = ("MODEL.FOCAL_DET.CLS_LOSS.NAME", "EqualizedFocalLoss")
STATS = ("cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg")
NAME = "focal_det_efl_train"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    spec = ShapesSpec(num_train=8, num_val=2, image_size=64, max_objects=4, min_size=12,
                      max_size=40)
    folder = ensure_generated(spec, root=str(tmp_path_factory.mktemp("data")))
    if NAME in DatasetCatalog.list():
        DatasetCatalog.remove(NAME)
        MetadataCatalog.remove(NAME)
    register_coco_instances(NAME, {}, os.path.join(folder, "train.json"), folder)
    return folder


def _args(out, *extra, max_iter=4):
    argv = ["--config-file", os.path.join(CONFIGS, "builtin", "retinanet_R18_shapes.yaml"),
            *extra, "OUTPUT_DIR", str(out), "DATASETS.TRAIN", f"('{NAME}',)",
            "DATASETS.TEST", "()", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
            "DATALOADER.NUM_WORKERS", "0", "SEED", "5", "SOLVER.AMP.ENABLED", "True", *EFL]
    return engine.get_parser().parse_args(argv)


def _train(args, resume=False):
    trainer = engine.Trainer(engine.setup(args))
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_bf16_training_updates_the_statistics_and_resumes_bit_identical(tiny_dataset, tmp_path):
    ref = tmp_path / "straight"
    trainer = _train(_args(ref))
    assert type(trainer._trainer) is FocalAMPTrainer  # bf16 autocast on the CPU
    a = torch.load(ref / "model_final.pth", weights_only=True)["model"]
    assert a["cls_loss.pos_grad"].gt(0).all() and a["cls_loss.neg_grad"].gt(0).all()
    assert torch.isfinite(a["cls_loss.neg_grad"]).all()
    # 4 steps, each added once: the buffers are the sum of 4 positive step sums, more than 1
    two = torch.load(ref / "model_0000001.pth", weights_only=True)["model"]
    assert (a["cls_loss.neg_grad"] > two["cls_loss.neg_grad"]).all()

    # stop after the iteration-2 checkpoint, resume: the same weights and statistics, bit for bit
    out = tmp_path / "resumed"
    _train(_args(out, max_iter=2))
    os.remove(out / "model_final.pth")
    (out / "last_checkpoint").write_text("model_0000001.pth")
    resumed = _train(_args(out, "--resume"), resume=True)
    assert resumed.start_iter == 2
    b = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert set(STATS) <= set(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_two_gloo_processes_hold_the_statistics_of_one_process(tmp_path):
    data_root = str(tmp_path / "data")
    single, _ = _ddp_train(str(tmp_path / "single"), data_root, ims_per_batch=4, extra=EFL)
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    mp.spawn(_ddp_worker, args=(2, free_port(), out, data_root, EFL), nprocs=2, join=True)
    r0 = torch.load(os.path.join(out, "rank0.pt"), weights_only=True)["weights"]
    r1 = torch.load(os.path.join(out, "rank1.pt"), weights_only=True)["weights"]
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks differ at {k}"
    for k in STATS:
        assert single[k].gt(0).any()
        # the gradient of the loss the optimizer follows: DDP's mean over workers, so not
        # twice one process's sums (the official per-worker sum would be)
        torch.testing.assert_close(r0[k], single[k], rtol=1e-3, atol=0)
    for k, v in single.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(r0[k], v, rtol=1e-3, atol=1e-5)
