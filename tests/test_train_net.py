"""train_net.py end to end on a tiny generated dataset: trains, evaluates with COCO AP, writes
its pictures, resumes from last_checkpoint, --eval-only loads MODEL.WEIGHTS; demo.py draws."""
import glob
import json
import os
import shutil

import cv2
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.events import get_event_storage

import focal_det
from focal_det import demo, engine
from focal_det.data import CLASSES, ShapesSpec, ensure_generated
from tests.common import SHAPES_CONFIG, TINY_SHAPES as TINY, register_coco, tiny_run_opts

NAMES = ("focal_det_test_train", "focal_det_test_val")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    folder = ensure_generated(TINY, root=str(tmp_path_factory.mktemp("data")))
    for name, split in zip(NAMES, ("train", "val")):
        register_coco(name, os.path.join(folder, f"{split}.json"), folder)
    return folder


def _args(out, *extra, opts=()):
    argv = ["--config-file", SHAPES_CONFIG, *extra, "OUTPUT_DIR", str(out),
            "DATASETS.TRAIN", f"('{NAMES[0]}',)", "DATASETS.TEST", f"('{NAMES[1]}',)",
            *tiny_run_opts(), "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0", "SEED", "3", *opts]
    return engine.get_parser().parse_args(argv)


def test_generated_dataset_is_deterministic_and_complete(tiny_dataset, tmp_path):
    again = ensure_generated(TINY, root=str(tmp_path))
    for split in ("train", "val"):
        a = json.load(open(os.path.join(tiny_dataset, f"{split}.json")))
        b = json.load(open(os.path.join(again, f"{split}.json")))
        assert a["annotations"] == b["annotations"] and a["images"] == b["images"]
    assert [c["name"] for c in a["categories"]] == list(CLASSES)
    changed = ShapesSpec(num_train=8, num_val=4, image_size=64, max_size=40, seed=1)
    assert changed.digest() != TINY.digest()
    assert not glob.glob(os.path.join(os.path.dirname(tiny_dataset), ".focal_det_shapes_tmp*"))
    with pytest.raises(ValueError, match="max_size"):
        ShapesSpec(image_size=64, max_size=72)


@pytest.mark.slow
def test_train_evaluate_render_resume_and_eval_only(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    engine.main(_args(out, "--vis-images", "2"))
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert any("bbox/AP50" in m for m in metrics)  # evaluated at the end of training
    for name in ("model_final.pth", "metrics.json", "training_curves.png", "last_checkpoint"):
        assert os.path.getsize(out / name) > 0, name
    assert len(glob.glob(str(out / "predictions" / "*.png"))) == 2

    # --resume continues from last_checkpoint (iteration 4) to MAX_ITER 6.
    trainer = engine.Trainer(engine.setup(_args(out, "--resume",
                                                      opts=["SOLVER.MAX_ITER", "6"])))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 4
    trainer.train()
    assert trainer.iter == 6 and os.path.exists(out / "model_final.pth")

    res = engine.main(_args(tmp_path / "eval", "--eval-only", "--vis-images", "2",
                               opts=["MODEL.WEIGHTS", str(out / "model_final.pth")]))
    assert set(res["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(0.0 <= res["bbox"][k] <= 100.0 for k in ("AP", "AP50", "AP75"))
    assert len(glob.glob(str(tmp_path / "eval" / "predictions" / "*.png"))) == 2


def test_pictures_have_captions_and_labelled_axes(tiny_dataset, tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np

    from focal_det.utils.vis import training_curves_figure, with_caption

    rows = [{"iteration": i, "total_loss": 1.0 / (i + 1), "loss_cls": 0.5, "loss_box_reg": 0.5,
             "lr": 0.01} for i in range(5)] + [{"iteration": 4, "bbox/AP": 10.0,
                                                "bbox/AP50": 20.0, "bbox/AP75": 5.0}]
    fig = training_curves_figure(rows)
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    plt.close(fig)
    captioned = with_caption(np.full((40, 200, 3), 255, np.uint8), "ground truth (3 boxes)")
    assert captioned.shape == (68, 200, 3) and (captioned[:28] < 128).any()  # text in the band
    out = tmp_path / "run"
    engine.main(_args(out, "--vis-images", "1", opts=["SOLVER.MAX_ITER", "1"]))
    picture = cv2.imread(glob.glob(str(out / "predictions" / "*.png"))[0])
    half = (picture.shape[1] - 8) // 2
    for part in (picture[:28, :half], picture[:28, half + 8:]):  # both halves captioned
        assert (part < 128).any()


@pytest.mark.slow
def test_keep_checkpoints_keeps_the_newest_periodic_and_the_final(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    engine.main(_args(out, "--vis-images", "-1", "--keep-checkpoints", "1",
                         opts=["SOLVER.MAX_ITER", "7"]))  # periodic at iterations 1, 3, 5
    assert sorted(p.name for p in out.glob("model_*.pth")) == ["model_0000005.pth",
                                                               "model_final.pth"]


@pytest.mark.slow
def test_builtin_config_has_a_fixed_seed_and_two_runs_agree(tiny_dataset, tmp_path):
    builtin = focal_det.get_cfg()
    builtin.merge_from_file(SHAPES_CONFIG)
    assert builtin.SEED >= 0
    finals = []
    for run in ("a", "b"):
        args = _args(tmp_path / run, "--vis-images", "-1",
                     opts=["SOLVER.MAX_ITER", "3", "SEED", str(builtin.SEED)])
        engine.main(args)
        finals.append(torch.load(tmp_path / run / "model_final.pth", weights_only=True)["model"])
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


@pytest.mark.slow
def test_demo_draws_images_and_video(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    engine.main(_args(out, "--vis-images", "-1", opts=["SOLVER.MAX_ITER", "2"]))
    images = sorted(glob.glob(os.path.join(tiny_dataset, "val", "*.jpg")))
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 64))
    for p in images:
        writer.write(cv2.imread(p))
    writer.release()
    common = ["--config-file", SHAPES_CONFIG,
              "--confidence-threshold", "0.0"]
    opts = ["--opts", "MODEL.WEIGHTS", str(out / "model_final.pth"),
            "DATASETS.TEST", f"('{NAMES[1]}',)"]
    demo.main(common + ["--input", os.path.join(tiny_dataset, "val"), "--output",
                        str(tmp_path / "drawn")] + opts)
    assert len(os.listdir(tmp_path / "drawn")) == len(images)
    demo.main(common + ["--input", images[0], "--output", str(tmp_path / "one.png")] + opts)
    assert cv2.imread(str(tmp_path / "one.png")).shape == (64, 64, 3)
    demo.main(common + ["--video-input", video, "--output", str(tmp_path / "v.mp4")] + opts)
    cap = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(images)
    with pytest.raises(SystemExit, match="no such image"):
        demo.main(common + ["--input", str(tmp_path / "missing*.jpg")] + opts)

    # One unreadable file in a glob: reported and skipped, the others drawn, exit non-zero.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in images[:2]:
        shutil.copy(p, mixed)
    (mixed / "broken.jpg").write_text("not an image")
    with pytest.raises(SystemExit) as e:
        demo.main(common + ["--input", str(mixed / "*.jpg"), "--output",
                            str(tmp_path / "mixed_out")] + opts)
    assert e.value.code == 1
    assert sorted(os.listdir(tmp_path / "mixed_out")) == sorted(os.path.basename(p)
                                                                for p in images[:2])
    # One output file for several inputs, and a non-video, are errors before any work.
    with pytest.raises(SystemExit, match="is a file name, but there are 2 inputs"):
        demo.main(common + ["--input", *images[:2], "--output", str(tmp_path / "x.png")] + opts)
    assert not (tmp_path / "x.png").exists()
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(SystemExit, match="not a video this OpenCV can read"):
        demo.main(common + ["--video-input", str(tmp_path / "notes.mp4"), "--output",
                            str(tmp_path / "v2.mp4")] + opts)
    assert not (tmp_path / "v2.mp4").exists()


def test_demo_without_output_says_nothing_is_written(tiny_dataset, tmp_path, capfd):
    out = tmp_path / "run"
    engine.main(_args(out, "--vis-images", "-1", opts=["SOLVER.MAX_ITER", "1"]))
    image = sorted(glob.glob(os.path.join(tiny_dataset, "val", "*.jpg")))[0]
    demo.main(["--config-file", SHAPES_CONFIG,
               "--input", image, "--opts", "MODEL.WEIGHTS", str(out / "model_final.pth")])
    assert "No --output given" in "".join(capfd.readouterr())


def test_zero_detections_evaluate_to_ap_zero(tiny_dataset, tmp_path):
    from detectron2.structures import Boxes, Instances

    from focal_det.evaluation import FocalCOCOEvaluator

    ev = FocalCOCOEvaluator(NAMES[1], output_dir=str(tmp_path), distributed=False)
    ev.reset()
    for d in DatasetCatalog.get(NAMES[1]):
        empty = Instances((d["height"], d["width"]), pred_boxes=Boxes(torch.zeros(0, 4)),
                          scores=torch.zeros(0), pred_classes=torch.zeros(0, dtype=torch.long))
        ev.process([{"image_id": d["image_id"]}], [{"instances": empty}])
    assert ev.evaluate()["bbox"]["AP"] == 0.0


def test_num_classes_must_match_the_training_dataset(tiny_dataset, tmp_path):
    args = _args(tmp_path / "bad", opts=["MODEL.RETINANET.NUM_CLASSES", "7"])
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.NUM_CLASSES=7.*has 4 classes"):
        engine.main(args)


def _generate(root):
    spec = ShapesSpec(num_train=6, num_val=2, image_size=48, max_size=30, seed=5)
    return ensure_generated(spec, root=root)


@pytest.mark.slow
def test_concurrent_generation_is_safe(tmp_path):
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(3) as pool:
        folders = pool.map(_generate, [str(tmp_path)] * 3)
    assert len(set(folders)) == 1
    data = json.load(open(os.path.join(folders[0], "train.json")))
    assert len(data["images"]) == 6
    for im in data["images"]:
        assert cv2.imread(os.path.join(folders[0], im["file_name"])) is not None
    assert os.listdir(tmp_path) == [os.path.basename(folders[0])]  # no temporaries left


def test_non_finite_loss_stops_training_naming_iteration_and_loss(tiny_dataset, tmp_path):
    trainer = engine.Trainer(engine.setup(_args(tmp_path / "nan")))
    trainer.resume_or_load(resume=False)
    loss = trainer.model.cls_loss

    class NanFromSecondIteration:  # (the loss is called once per FPN level)
        def __getattr__(self, name):
            return getattr(loss, name)

        def __call__(self, logits, labels):
            value = loss(logits, labels)
            return value * float("nan") if get_event_storage().iter >= 1 else value

    trainer.model.cls_loss = NanFromSecondIteration()
    with pytest.raises(FloatingPointError, match=r"(?s)iteration=1.*loss_cls.*nan"):
        trainer.train()
    assert not os.path.exists(tmp_path / "nan" / "model_final.pth")


@pytest.mark.parametrize("clip_type", ["value", "norm"])
def test_gradient_clipping_trains_with_our_model(tiny_dataset, tmp_path, clip_type):
    args = _args(tmp_path / clip_type, opts=["SOLVER.CLIP_GRADIENTS.ENABLED", "True",
                                             "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip_type,
                                             "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.01",
                                             "SOLVER.MAX_ITER", "2"])
    trainer = engine.Trainer(engine.setup(args))
    assert "Clip" in type(trainer.optimizer).__name__  # Detectron2 wraps the optimizer
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
