"""Two CPU processes (gloo) train through train_net.py's setup and Trainer under DDP: both ranks
end with identical weights, and with the "num_fg" normalizer the loss equals the
single-process loss on the same total batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from focal_det.engine.launcher import free_port
from tests.common import SHAPES_CONFIG, tiny_run_opts

pytestmark = pytest.mark.slow  # subprocesses / training runs (make test-slow)

ITERS = 3


def _train(out, data_root, ims_per_batch, extra=()):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from focal_det import engine
    from focal_det.data import ShapesSpec, ensure_generated

    spec = ShapesSpec(num_train=8, num_val=2, image_size=64, max_objects=4, min_size=12,
                      max_size=40)
    folder = ensure_generated(spec, root=data_root)
    if "ddp_train" not in DatasetCatalog.list():
        register_coco_instances("ddp_train", {}, os.path.join(folder, "train.json"), folder)
    argv = ["--config-file", SHAPES_CONFIG, "OUTPUT_DIR", out, "DATASETS.TRAIN", "('ddp_train',)",
            "DATASETS.TEST", "()", *tiny_run_opts(batch=ims_per_batch),
            "SOLVER.MAX_ITER", str(ITERS), "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "0",
            "SEED", "11", "MODEL.FOCAL_DET.LOSS_NORMALIZER", "num_fg",
            # batch-independent normalization, so that per-rank batches compute what one
            # process computes on the whole batch
            "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.FPN.NORM", "", "MODEL.RETINANET.NORM", "",
            *extra]
    trainer = engine.Trainer(engine.setup(engine.get_parser().parse_args(argv)))
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    storage = trainer.storage
    losses = ([v for v, _ in storage.history("loss_cls").values()]  # only rank 0 logs
              if "loss_cls" in storage.histories() else [])
    assert ("AMP" in type(trainer._trainer).__name__) == ("SOLVER.AMP.ENABLED" in extra)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def _worker(rank, world, port, out, data_root, extra=()):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        weights, losses = _train(out, data_root, ims_per_batch=4, extra=extra)
        torch.save({"weights": weights, "losses": losses}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    data_root = str(tmp_path / "data")
    single_w, single_losses = _train(str(tmp_path / "single"), data_root, ims_per_batch=4)
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    mp.spawn(_worker, args=(2, free_port(), out, data_root), nprocs=2, join=True)
    r0 = torch.load(os.path.join(out, "rank0.pt"), weights_only=True)
    r1 = torch.load(os.path.join(out, "rank1.pt"), weights_only=True)
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), f"ranks differ at {k}"
    # rank 0 logs the mean over ranks of each rank's loss: the batch's loss over its fg count
    assert len(r0["losses"]) == len(single_losses) == ITERS
    assert r0["losses"] == pytest.approx(single_losses, rel=1e-4)
    for k, v in single_w.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(r0["weights"][k], v, rtol=1e-3, atol=1e-5)


def test_two_gloo_processes_train_with_bf16_autocast(tmp_path):
    """SOLVER.AMP.ENABLED under DDP on the CPU: both ranks train in bf16 and stay identical."""
    out = str(tmp_path / "ddp_amp")
    os.makedirs(out)
    amp = ("SOLVER.AMP.ENABLED", "True")
    mp.spawn(_worker, args=(2, free_port(), out, str(tmp_path / "data"), amp), nprocs=2,
             join=True)
    r0 = torch.load(os.path.join(out, "rank0.pt"), weights_only=True)
    r1 = torch.load(os.path.join(out, "rank1.pt"), weights_only=True)
    assert len(r0["losses"]) == ITERS and all(torch.isfinite(torch.tensor(r0["losses"])))
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), f"ranks differ at {k}"
