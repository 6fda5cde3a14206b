"""The letters dataset (generated, deterministic, tight boxes, registered), the (anchor, class)
imbalance count (checked against the training loss's own foreground count), the easy-negative
shares (checked against hand-computed values) and ablate's AP-against-iterations curves."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_det.analysis import ablation
from focal_det.analysis.ablation_report import mean_curve
from focal_det.analysis.easy_negatives import easy_negative_shares
from focal_det.analysis.imbalance import _feature_shapes, count_binary_samples, training_targets
from focal_det.data import LETTER_CLASSES, LettersSpec, ShapesSpec, ensure_generated
from focal_det.data.letters import _glyph
from tests.common import CONFIGS, load_script, tiny_run_opts

ablate = load_script("tools/ablate.py")
easy_negatives = load_script("tools/easy_negatives.py")
imbalance = load_script("tools/imbalance.py")

TINY = LettersSpec(num_train=12, num_val=4, image_size=64, max_objects=2, min_size=10,
                   max_size=24)
LETTERS = os.path.join(CONFIGS, "builtin", "retinanet_R18_letters.yaml")
FAST = tiny_run_opts(batch=4, channels=32)


@pytest.fixture(scope="module")
def letters(tmp_path_factory):
    return ensure_generated(TINY, root=str(tmp_path_factory.mktemp("letters")))


def _cfg(opts=()):
    import focal_det

    cfg = focal_det.get_cfg()
    cfg.merge_from_file(LETTERS)
    cfg.merge_from_list([*FAST, *opts])
    return cfg


def test_letters_dataset_is_deterministic_registered_and_tight(letters, tmp_path):
    again = ensure_generated(TINY, root=str(tmp_path))
    for name in ("train.json", "val.json", "train/00003.jpg"):
        with open(os.path.join(letters, name), "rb") as a, open(os.path.join(again, name),
                                                                "rb") as b:
            assert a.read() == b.read(), name
    coco = json.load(open(os.path.join(letters, "train.json")))
    assert [c["name"] for c in coco["categories"]] == list(LETTER_CLASSES)
    assert len(LETTER_CLASSES) == 34 and "0" not in LETTER_CLASSES and "1" not in LETTER_CLASSES
    assert len(coco["images"]) == 12 and coco["annotations"]
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert 1 <= a["category_id"] <= 34 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
    assert os.path.basename(letters).startswith("focal_det_letters_")
    assert TINY.digest() != ShapesSpec().digest()
    for name in ("focal_det_letters_train", "focal_det_letters_val"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).thing_classes == list(LETTER_CLASSES)
    with pytest.raises(ValueError, match="max_size"):
        LettersSpec(image_size=64, max_size=40)


def test_glyph_masks_are_tight():
    rng = np.random.default_rng(0)
    for char in "AIW7":
        mask = _glyph(char, 20, rng)
        for edge in (mask[0], mask[-1], mask[:, 0], mask[:, -1]):
            assert edge.max() >= 0.5, char  # ink on every side of the box
        assert 14 <= mask.shape[0] <= 26, (char, mask.shape)


def test_feature_shapes_are_the_backbones():
    model = build_model(_cfg()).eval()
    for h, w in ((64, 64), (96, 128), (100, 150)):
        with torch.no_grad():
            feats = model.backbone(torch.zeros(1, 3, -(-h // 32) * 32, -(-w // 32) * 32))
        expected = [tuple(feats[f].shape[-2:]) for f in model.head_in_features]
        assert [tuple(t.shape[-2:]) for t in _feature_shapes(model, h, w)] == expected


def test_positive_count_is_the_training_loss_count(letters):
    """The tool's positives per image equal num_pos_anchors that FocalRetinaNet.losses logs."""
    cfg = _cfg()
    model = build_model(cfg)
    dicts = load_coco_json(os.path.join(letters, "train.json"), letters)[:4]
    counts = count_binary_samples(model, training_targets(cfg, dicts))
    # The real training input (decoded images, no flip so that both see the same boxes).
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[T.ResizeShortestEdge(64, 64)])
    batch = [mapper(d) for d in dicts]
    model.train()
    with EventStorage() as storage:
        model(batch)
        logged = storage.latest()["num_pos_anchors"][0]
    assert counts["positives"] == pytest.approx(logged * len(dicts)) and counts["positives"] > 0
    valid = counts["anchors"] - counts["ignored_anchors"]
    assert counts["negatives"] == valid * 34 - counts["positives"]
    assert counts["negatives_per_positive"] == counts["negatives"] / counts["positives"]
    # The same boxes as the mapper makes from the decoded image.
    for (size, gt), item in zip(training_targets(cfg, dicts), batch):
        assert size == tuple(item["image"].shape[-2:])
        assert torch.equal(gt.gt_boxes.tensor, item["instances"].gt_boxes.tensor)
        assert torch.equal(gt.gt_classes, item["instances"].gt_classes)
    again = count_binary_samples(model, training_targets(cfg, dicts))
    assert again == counts


def test_imbalance_tool_writes_tables(letters, tmp_path):
    rows = imbalance.main(["--config-file", LETTERS, "--register-coco", "tiny_letters_train",
                           os.path.join(letters, "train.json"), letters, "--output",
                           str(tmp_path), *FAST, "DATASETS.TRAIN", "('tiny_letters_train',)"])
    assert rows[0]["images"] == 12 and rows[0]["negatives_per_positive"] > 1000
    assert rows[-1]["negatives_per_positive"] == 80_000  # the paper's COCO figure
    text = (tmp_path / "imbalance.md").read_text()
    assert "tiny_letters_train" in text and "80,000 : 1" in text


def test_easy_negative_shares_by_hand():
    pos, neg = torch.tensor([0.0]), torch.tensor([-3.0, 1.0])  # one easy, one hard negative
    ce = easy_negative_shares(pos, neg, gamma=0.0, alpha=-1.0)
    sp = torch.nn.functional.softplus
    losses = torch.tensor([sp(torch.tensor(0.0)), sp(torch.tensor(-3.0)), sp(torch.tensor(1.0))])
    assert ce["loss_share_easy_negatives"] == pytest.approx(float(losses[1] / losses.sum()))
    grads = torch.tensor([0.5, torch.sigmoid(torch.tensor(-3.0)), torch.sigmoid(torch.tensor(1.))])
    assert ce["grad_l1_share_easy_negatives"] == pytest.approx(float(grads[1] / grads.sum()))
    assert ce["grad_l2sq_share_easy_negatives"] == pytest.approx(
        float(grads[1] ** 2 / (grads ** 2).sum()))
    assert ce["easy_negatives"] == 1 and ce["easy_fraction_of_negatives"] == 0.5
    fl = easy_negative_shares(pos, neg, gamma=2.0, alpha=-1.0)
    assert fl["loss_share_easy_negatives"] < ce["loss_share_easy_negatives"] / 10


def test_easy_negatives_tool_at_init_and_trained(letters, tmp_path):
    model = build_model(_cfg())
    weights = tmp_path / "w.pth"
    torch.save({"model": model.state_dict()}, weights)
    rows = easy_negatives.main([
        "--config-file", LETTERS, "--register-coco", "tiny_letters_val",
        os.path.join(letters, "val.json"), letters, "--dataset", "tiny_letters_val",
        "--model", "init=init", "--model", f"trained={weights}", "--num-images", "4",
        "--output", str(tmp_path / "out"), *FAST])
    assert [(r["model"], r["loss"]) for r in rows] == [
        ("init", "CE_a0.75"), ("init", "FL_g2_a0.25"),
        ("trained", "CE_a0.75"), ("trained", "FL_g2_a0.25")]
    init_ce, init_fl = rows[0], rows[1]
    # At the prior (p = 0.01) every negative is easy; CE's loss is mostly theirs, FL's is not.
    assert init_ce["easy_fraction_of_negatives"] == 1.0
    assert init_ce["loss_share_easy_negatives"] > 0.5 > init_fl["loss_share_easy_negatives"]
    assert "| init | FL_g2_a0.25 |" in (tmp_path / "out" / "easy_negatives.md").read_text()
    with pytest.raises(SystemExit, match="NAME=GAMMA,ALPHA"):
        easy_negatives.main(["--config-file", LETTERS, "--model", "a=init", "--loss", "x=1"])


def test_ap_curves_from_metrics_and_their_mean(tmp_path):
    rows = [{"iteration": 299, "bbox/AP": 1.0}, {"iteration": 599, "bbox/AP": 2.0},
            {"iteration": 599, "bbox/AP": 2.5},  # evaluated again after a resume
            {"iteration": 1200, "bbox/AP": 4.0}, {"iteration": 1199, "loss_cls": 0.5}]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows))
    metrics = ablation.read_final_metrics(str(tmp_path), eval_period=300)
    assert metrics["ap_curve"] == [[300, 1.0], [600, 2.5], [1200, 4.0]]  # as JSON stores it
    assert metrics["AP"] == 4.0 and metrics["final_loss_cls"] == 0.5
    mean = mean_curve([[(300, 1.0), (600, 3.0)], [(300, 3.0), (600, 5.0), (900, 9.0)]])
    assert [m[:2] for m in mean] == [[300, 2.0], [600, 4.0]] and mean[0][3] == 2
    opts = dict(zip(*[iter(ablation.budget_opts(1200, 4))] * 2))
    assert opts["TEST.EVAL_PERIOD"] == "300"
    with pytest.raises(ValueError, match="must divide"):
        ablation.budget_opts(1000, 3)


def test_letters_grid_is_the_issue_grid():
    names = [e.name for e in ablation.GRIDS["letters"]]
    assert names == ["ce_a0.25", "ce_a0.50", "ce_a0.75", "fl_g0.5_a0.50", "fl_g1_a0.25",
                     "fl_g2_a0.25", "fl_g5_a0.25", "ce_noprior", "flstar_g2_b1", "flstar_g4_b0"]


@pytest.mark.slow
def test_ablate_evaluates_at_several_points_and_plots_curves(letters, tmp_path):
    coco = ["--register-coco", "tl_train", os.path.join(letters, "train.json"), letters,
            "--register-coco", "tl_val", os.path.join(letters, "val.json"), letters,
            "--train", "tl_train", "--test", "tl_val"]
    out = tmp_path / "abl"
    results = ablate.main([*coco, "--config-file", LETTERS, "--grid", "letters", "--only",
                           "ce_a0.75", "fl_g2_a0.25", "--iters", "4", "--eval-points", "2",
                           "--seeds", "0", "--output", str(out), *FAST])
    assert all([i for i, _ in r["ap_curve"]] == [2, 4] for r in results)
    data = json.loads((out / "ablation.json").read_text())
    assert data["eval_points"] == 2 and all(len(r["ap_curve"]) == 2 for r in data["rows"])
    assert (out / "ablation_curves.png").stat().st_size > 10_000
