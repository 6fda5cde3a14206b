"""Backbone pretraining (focal_det.pretrain, tools/pretrain_backbone.py): the generated source
is deterministic and disjoint from the detection data, training is deterministic and resumes
to the same weights after a signal, the export loads into the paper-faithful detector's
frozen-BN backbone with every key checked, ImageFolder input works, bad input is named."""
import os
import signal

import cv2
import numpy as np
import pytest
import torch

from focal_det import cli
from focal_det.data.letters import LETTER_CLASSES
from focal_det.engine.preemption import EXIT_PREEMPTED
from focal_det.pretrain import export, train
from focal_det.pretrain.folder import FolderSourceError, ImageFolderSource
from focal_det.pretrain.glyphs import CLASSES, GlyphClassification
from tests.common import CONFIGS, load_script

tool = load_script("tools/pretrain_backbone.py")
PAPER = os.path.join(CONFIGS, "builtin", "retinanet_R18_letters_paper.yaml")
TINY = train.Settings(iters=4, batch_size=4, lr=0.05, warmup_iters=1, log_period=1,
                      eval_period=4, checkpoint_period=100)


def _cfg(*opts):
    return cli.load_yaml_config(PAPER, list(opts), device="cpu")


def _small_glyphs():
    return GlyphClassification(seed=7, image_size=32, num_val=12)


def test_glyph_source_is_deterministic_balanced_and_not_the_detection_task():
    src = GlyphClassification()
    assert src.num_classes == len(CLASSES) == 63
    a, la = src.item("train", 5)
    b, lb = src.item("train", 5)
    assert la == lb and np.array_equal(a, b) and a.shape == (64, 64, 3) and a.dtype == np.uint8
    v, _ = src.item("val", 5)
    assert not np.array_equal(a, v)  # the held-out split is other images
    labels = [src.item("train", i)[1] for i in range(2000)]
    assert set(labels) == set(range(63))  # every class is drawn
    # The detection classes appear only as other renderings; the rest are other classes.
    assert sum(c.startswith("glyph_") for c in CLASSES) == len(LETTER_CLASSES)
    assert {c.split("_")[0] for c in CLASSES} == {"glyph", "lower", "shape", "texture"}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_is_deterministic_and_resumes_exactly_after_a_signal(tmp_path):
    cfg = _cfg()
    full = train.train(_small_glyphs(), cfg, TINY, str(tmp_path / "full"), progress=lambda s: 0)
    again = train.train(_small_glyphs(), cfg, TINY, str(tmp_path / "again"),
                        progress=lambda s: 0)
    for k, v in _state(full["model"]).items():
        assert torch.equal(v, again["model"].state_dict()[k]), k

    lines = []

    def stop_after_two(line):
        lines.append(line)
        if line.startswith("[pretrain] iter 2/"):
            os.kill(os.getpid(), signal.SIGTERM)  # recorded by the handler, not fatal

    with pytest.raises(SystemExit) as stopped:
        train.train(_small_glyphs(), cfg, TINY, str(tmp_path / "cut"), progress=stop_after_two)
    assert stopped.value.code == EXIT_PREEMPTED
    assert any("stopped by SIGTERM after iteration 2" in s for s in lines)
    with pytest.raises(train.PretrainError, match="--resume"):
        train.train(_small_glyphs(), cfg, TINY, str(tmp_path / "cut"), progress=lambda s: 0)
    resumed = train.train(_small_glyphs(), cfg, TINY, str(tmp_path / "cut"), resume=True,
                          progress=lines.append)
    assert "[pretrain] resuming at iteration 2/4" in lines
    for k, v in _state(full["model"]).items():
        assert torch.equal(v, resumed["model"].state_dict()[k]), k
    assert resumed["report"]["history"] == full["report"]["history"]
    other = train.Settings(**{**TINY.__dict__, "lr": 0.01})
    with pytest.raises(train.PretrainError, match="settings.lr: checkpoint 0.05, now 0.01"):
        train.train(_small_glyphs(), cfg, other, str(tmp_path / "cut"), resume=True,
                    progress=lambda s: 0)


def test_tool_exports_weights_the_faithful_detector_loads_into_frozen_bn(tmp_path, capsys):
    out = tmp_path / "pre"
    report = tool.main(["--output", str(out), "--iters", "2", "--batch-size", "4",
                        "--image-size", "32", "--warmup-iters", "1", "--eval-period", "2",
                        "--log-period", "1"])
    text = capsys.readouterr().out
    assert "[pretrain] iter 1/2  loss" in text and "s/it  eta" in text
    assert "held-out top-1" in text and "loads all 100 backbone keys (20 frozen norms)" in text
    assert report["check"] == {"backbone_keys": 100, "frozen_norms": 20, "norms": 20}
    assert 0 <= report["val_top1"] <= 100 and report["history"][-1]["iteration"] == 2
    saved = torch.load(out / "backbone.pth", weights_only=True)
    assert all(k.startswith("backbone.bottom_up.") for k in saved["model"])
    assert not any(k.endswith("num_batches_tracked") for k in saved["model"])
    # The BN statistics land in FrozenBatchNorm2d buffers unchanged.
    clf = train.load_classifier(_cfg(), str(out), len(CLASSES))
    bn = clf.bottom_up.stem.conv1.norm
    assert isinstance(bn, torch.nn.BatchNorm2d)
    assert torch.equal(saved["model"]["backbone.bottom_up.stem.conv1.norm.running_var"],
                       bn.running_var)
    # Another depth does not fit: the check names the keys.
    with pytest.raises(export.BackboneExportError, match="missing .*res2.2"):
        export.check_detector_loads(_cfg("MODEL.RESNETS.DEPTH", "34"), str(out / "backbone.pth"))


def _folder(root, classes=("cat", "dog"), n=6, size=40):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 255, (size, size + 8 * i, 3), dtype=np.uint8)
            cv2.imwrite(str(root / c / f"{i}.png"), img)


def test_image_folder_source_splits_crops_and_trains(tmp_path):
    _folder(tmp_path / "imgs")
    src = ImageFolderSource(str(tmp_path / "imgs"), image_size=32, val_fraction=0.34, seed=0)
    assert src.classes == ["cat", "dog"] and len(src.val) == 4 and len(src.train) == 8
    assert not {p for p, _ in src.val} & {p for p, _ in src.train}
    a, la = src.train_item(3, 0)
    b, lb = src.train_item(3, 0)
    assert a.shape == (32, 32, 3) and np.array_equal(a, b) and la == lb
    # Epoch 1 visits every training image once, in another order than epoch 0.
    first = [src.train_item(i, 0)[1] for i in range(8)]
    assert sorted(first) == sorted(label for _, label in src.train)
    assert all(img.shape == (32, 32, 3) for img, _ in src.val_items())
    out = train.train(src, _cfg(), TINY, str(tmp_path / "run"), progress=lambda s: 0)
    assert out["model"].fc.out_features == 2

    (tmp_path / "split" / "train").mkdir(parents=True)
    _folder(tmp_path / "split" / "train")
    _folder(tmp_path / "split" / "val", n=2)
    src = ImageFolderSource(str(tmp_path / "split"), image_size=32)
    assert len(src.train) == 12 and len(src.val) == 4


def test_image_folder_bad_input_is_named(tmp_path):
    with pytest.raises(FolderSourceError, match="is not a directory"):
        ImageFolderSource(str(tmp_path / "missing"))
    _folder(tmp_path / "one", classes=("only",))
    with pytest.raises(FolderSourceError, match="at least 2 class folders"):
        ImageFolderSource(str(tmp_path / "one"))
    _folder(tmp_path / "bad")
    (tmp_path / "bad" / "cat" / "9.png").write_bytes(b"not an image")
    src = ImageFolderSource(str(tmp_path / "bad"), val_fraction=0.5)
    with pytest.raises(FolderSourceError, match="9.png: not a readable image"):
        [src.train_item(i, 0) for i in range(len(src.train))] + list(src.val_items())


def test_the_recipe_is_written_once():
    """The paper-faithful backbone's recipe is the tool's defaults: make pretrain, the
    reproduction script and the docs run the tool without repeating it."""
    d = train.Settings()
    assert (d.iters, d.batch_size, d.lr, d.warmup_iters, d.eval_period) == (3000, 64, 0.1, 100, 500)
    args = tool.get_parser().parse_args(["--output", "x"])
    assert train.Settings(**{k: getattr(args, k) for k in train.Settings.__dataclass_fields__}) == d
    repo = os.path.dirname(CONFIGS)
    for name in ("Makefile", "tools/reproduce_paper.sh", "README.md", "docs/REPRODUCTION.md"):
        with open(os.path.join(repo, name)) as f:
            text = f.read().replace("\\\n", " ")
        lines = [line for line in text.splitlines() if "tools/pretrain_backbone.py" in line]
        assert lines, name
        for line in lines:
            assert not any(flag in line for flag in ("--iters", "--eval-period", "--log-period",
                                                     "--lr", "--batch-size")), (name, line)
