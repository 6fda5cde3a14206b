"""Kill training with SIGKILL at several points, resume, and end with exactly the weights of an
uninterrupted run (CPU): iteration, optimizer, scheduler, data stream and augmentations all
continue where the last complete checkpoint left them."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.common import CONFIGS, REPO, run_child

pytestmark = pytest.mark.slow  # subprocesses / training runs (make test-slow)

RUNNER = r"""
import os, sys
from detectron2.data.datasets import register_coco_instances
from focal_det import engine
from focal_det.data import ShapesSpec, ensure_generated
spec = ShapesSpec(num_train=12, num_val=2, image_size=64, max_objects=4, min_size=12, max_size=40)
folder = ensure_generated(spec, root={data!r})
register_coco_instances("resume_train", {{}}, os.path.join(folder, "train.json"), folder)
args = engine.get_parser().parse_args(sys.argv[1:])
engine.main(args)
"""

MAX_ITER = 10


# The same run from the LazyConfig .py config: one engine, the same exact resume.
LAZY_OPTS = [
    "dataloader.train.dataset.names=resume_train", "dataloader.test.dataset.names=resume_train",
    "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
    "dataloader.train.mapper.augmentations.0.max_size=64",
    "dataloader.test.mapper.augmentations.0.short_edge_length=64",
    "dataloader.test.mapper.augmentations.0.max_size=64",
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=1",
    "dataloader.test.num_workers=0", f"train.max_iter={MAX_ITER}",
    "lr_multiplier.scheduler.milestones=[7,9]", f"lr_multiplier.scheduler.num_updates={MAX_ITER}",
    f"lr_multiplier.warmup_length={3 / MAX_ITER}", "train.checkpointer.period=2",
    "train.eval_period=0", "train.seed=7", "model.loss_normalizer=ema"]


def _command(tmp_path, out, resume, kind="yaml"):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(repo=REPO, data=str(tmp_path / "data")))
    head = [sys.executable, str(script), *(["--resume"] if resume else []), "--vis-images", "-1"]
    if kind == "py":
        return head + ["--config-file", os.path.join(CONFIGS, "lazy", "retinanet_R18_shapes.py"),
                       f"train.output_dir={out}", *LAZY_OPTS]
    return head + [
            "--config-file", os.path.join(CONFIGS, "builtin", "retinanet_R18_shapes.yaml"),
            "OUTPUT_DIR", str(out), "DATASETS.TRAIN", "('resume_train',)", "DATASETS.TEST", "()",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(MAX_ITER),
            "SOLVER.WARMUP_ITERS", "3", "SOLVER.STEPS", "(7,)", "SOLVER.CHECKPOINT_PERIOD", "2",
            "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "1", "SEED", "7",
            "MODEL.FOCAL_DET.LOSS_NORMALIZER", "ema"]


def _run(cmd):
    """Run a child to completion (hard timeout); on failure, the assertion shows its output."""
    run_child(cmd, timeout=900)


def _run_until_killed(cmd, out, checkpoints_seen, extra_delay):
    log = out.parent / f"{out.name}_child_{checkpoints_seen}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            _wait_for_checkpoint(proc, out, checkpoints_seen, extra_delay, log)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def _wait_for_checkpoint(proc, out, checkpoints_seen, extra_delay, log):
    deadline = time.time() + 900  # generous: a loaded CI machine can be 10x slower
    reached = False
    while time.time() < deadline and proc.poll() is None:
        done = sorted(f for f in os.listdir(out) if f.startswith("model_0")) \
            if out.exists() else []
        # Count a checkpoint once last_checkpoint names it: a kill between the model file and
        # last_checkpoint correctly resumes from the previous one, which this test needs not.
        last = out / "last_checkpoint"
        named = last.read_text().strip() if last.exists() else ""
        if len(done) >= checkpoints_seen and done and named == done[-1]:
            reached = True
            time.sleep(extra_delay)
            break
        time.sleep(0.02)
    if not reached:
        exited = proc.poll()
        raise AssertionError(
            f"no {checkpoints_seen} checkpoint(s) in {out} "
            + (f"(the child exited with {exited})" if exited is not None else "before the deadline")
            + f"; its output:\n{log.read_text()[-8000:]}")


def _final_weights(out):
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("kind", ["yaml", "py"])
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path, kind):
    ref = tmp_path / "uninterrupted"
    _run(_command(tmp_path, ref, resume=False, kind=kind))

    out = tmp_path / "killed"
    # The .yaml run is killed three times at different points; the .py run (the same engine
    # since issue 30) once mid-way, which is what tells whether its resume state is whole.
    kills = [(1, 0.0), (2, 0.15), (3, 0.05)] if kind == "yaml" else [(2, 0.1)]
    for i, (checkpoints, delay) in enumerate(kills):
        _run_until_killed(_command(tmp_path, out, resume=i > 0, kind=kind), out, checkpoints,
                          delay)
    assert not (out / "model_final.pth").exists(), "a kill came too late to test anything"
    last = (out / "last_checkpoint").read_text()
    ckpt = torch.load(out / last, map_location="cpu", weights_only=True)
    assert 0 < ckpt["iteration"] < MAX_ITER - 1
    _run(_command(tmp_path, out, resume=True, kind=kind))

    starts = [int(line.rsplit(" ", 1)[1]) for line in open(out / "log.txt")
              if "Starting training from iteration" in line]
    assert starts[0] == 0 and len(set(starts[1:])) >= min(len(kills), 2)
    assert all(s > 0 for s in starts[1:])

    a, b = _final_weights(ref), _final_weights(out)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
