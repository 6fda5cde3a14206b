"""The long-tailed built-in dataset (focal_det/data/longtail.py): image counts in LVIS's groups,
LVIS-format json and metadata, determinism; repeat-factor sampling from the config
(DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler) with Detectron2's repeat factors, drawn
positionally, and a resumed run that ends with the uninterrupted run's weights."""
import hashlib
import json
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler

from focal_det import engine
from focal_det.data import LETTER_CLASSES, LongtailSpec, ensure_generated
from focal_det.data.longtail import frequency_group
from focal_det.data.resumable import RepeatFactorPositionalDataset, repeat_factors
from tests.common import CONFIGS, register_coco, tiny_run_opts

LONGTAIL_CONFIG = os.path.join(CONFIGS, "builtin", "retinanet_R18_longtail.yaml")
# About a second to generate, all three groups (150 images down to 1: 3 frequent classes).
TINY = LongtailSpec(num_train=400, max_images=150, min_images=1, val_per_class=2,
                    image_size=64, min_size=10, max_size=26)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ensure_generated(TINY, root=str(tmp_path_factory.mktemp("longtail")))


def _json(folder, split):
    with open(os.path.join(folder, f"{split}.json")) as f:
        return json.load(f)


def test_default_counts_fall_geometrically_through_lvis_groups():
    spec = LongtailSpec()
    counts = spec.image_counts()
    assert len(counts) == len(LETTER_CLASSES) == 34
    ranked = sorted(counts, reverse=True)
    assert ranked[0] == 1000 and ranked[-1] == 1
    # log(count) is linear in the rank (1/n classes per count: each decade equally full)
    logs = np.log(np.array(ranked, float))
    expected = np.log(1000) * (1 - np.arange(34) / 33)
    assert np.abs(logs - expected).max() < 0.5 / 1 + 1e-9  # rounding to whole images only
    groups = Counter(frequency_group(n) for n in counts)
    assert groups == {"f": 11, "c": 11, "r": 12}, groups
    assert [frequency_group(n) for n in (1, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]
    assert spec.frequencies() == [frequency_group(n) for n in counts]
    assert counts != ranked  # rarity is a seeded permutation, not the alphabet


def test_generated_json_has_the_planned_counts_and_lvis_fields(tiny):
    train, val = _json(tiny, "train"), _json(tiny, "val")
    counts = TINY.image_counts()
    images_of = {c: set() for c in range(1, 35)}
    per_image = {img["id"]: set() for img in train["images"]}
    for a in train["annotations"]:
        images_of[a["category_id"]].add(a["image_id"])
        per_image[a["image_id"]].add(a["category_id"])
    assert [len(images_of[c]) for c in range(1, 35)] == counts
    for cat in train["categories"]:
        n = counts[cat["id"] - 1]
        assert cat["image_count"] == n and cat["frequency"] == frequency_group(n)
        assert cat["instance_count"] == n  # one instance of a class per image
    assert train["categories"] == val["categories"]  # training counts in both, as LVIS v1
    assert {frequency_group(n) for n in counts} == {"r", "c", "f"}
    for img, cats in per_image.items():
        assert len(cats) <= TINY.max_objects
        if any(counts[c - 1] <= 10 for c in cats):  # a rare object shares its image...
            assert any(counts[c - 1] > 100 for c in cats), (img, cats)  # ...with a frequent one
    val_counts = Counter(a["category_id"] for a in val["annotations"])
    assert val_counts == {c: TINY.val_per_class for c in range(1, 35)}
    for split in (train, val):
        present = {img["id"]: set() for img in split["images"]}
        for a in split["annotations"]:
            present[a["image_id"]].add(a["category_id"])
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x + w <= 64 and y + h <= 64
        for img in split["images"]:  # exhaustive: every absent class is a verified negative
            assert sorted(img["neg_category_ids"] + sorted(present[img["id"]])) == \
                list(range(1, 35))
            assert img["not_exhaustive_category_ids"] == []


def test_frequent_first_placement_on_the_default_plan():
    spec = LongtailSpec()
    train, val = spec.plan()
    counts = spec.image_counts()
    assert [sum(c in cls for cls in train) for c in range(34)] == counts
    for cls in train:
        if any(counts[c] <= 10 for c in cls):  # a rare object...
            assert any(counts[c] > 100 for c in cls), cls  # ...shares its image with a frequent one
    assert Counter(c for cls in val for c in cls) == {c: 20 for c in range(34)}
    assert all(len(set(cls)) == len(cls) <= 4 for cls in train + val)


def test_generation_is_deterministic(tiny, tmp_path):
    again = ensure_generated(TINY, root=str(tmp_path))
    assert _json(again, "train")["annotations"] == _json(tiny, "train")["annotations"]
    for name in ("train/00000.jpg", "val/00003.jpg"):
        digest = [hashlib.sha256(open(os.path.join(f, name), "rb").read()).hexdigest()
                  for f in (tiny, again)]
        assert digest[0] == digest[1], name
    with pytest.raises(ValueError, match="max_size"):
        LongtailSpec(image_size=64, max_size=40)
    with pytest.raises(ValueError, match="raise num_train"):
        LongtailSpec(num_train=300, max_images=300, max_objects=1).plan()


def test_registered_with_lvis_metadata():
    spec = LongtailSpec()
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"focal_det_longtail_{split}")
        assert meta.evaluator_type == "lvis"
        assert meta.thing_classes == list(LETTER_CLASSES)
        assert meta.class_frequency == spec.frequencies()
        assert meta.class_image_count == spec.image_counts()
        assert meta.json_file.endswith(os.path.join(spec.folder_name(), f"{split}.json"))


# ---------------------------------------------------------------- repeat-factor sampling


def _dicts(tiny):
    register_coco("focal_det_test_longtail_train", os.path.join(tiny, "train.json"), tiny)
    return DatasetCatalog.get("focal_det_test_longtail_train")


def test_repeat_factors_are_detectron2s_and_epochs_round_them(tiny):
    dicts = [d for d in _dicts(tiny) if d["annotations"]]
    factors = repeat_factors(dicts, 0.3)
    d2 = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.3)
    assert torch.equal(factors, d2)
    assert factors.max() > 2 and factors.min() == 1  # the rarest classes are repeated
    data = RepeatFactorPositionalDataset(dicts, seed=5, factors=factors)
    for epoch in range(3):
        reps = torch.bincount(data.epoch_indices(epoch), minlength=len(dicts)).float()
        assert bool(((reps == factors.floor()) | (reps == factors.ceil())).all())
    mean = sum(torch.bincount(data.epoch_indices(e), minlength=len(dicts)).float()
               for e in range(200)) / 200
    assert torch.allclose(mean, factors, atol=0.15)  # stochastic rounding: r in expectation
    # position p is a function of (seed, p): a fresh copy read from the middle agrees
    stream = [data[p]["file_name"] for p in range(3 * len(dicts))]
    fresh = RepeatFactorPositionalDataset(dicts, seed=5, factors=factors)
    assert [fresh[p]["file_name"] for p in range(2 * len(dicts), 3 * len(dicts))] == \
        stream[2 * len(dicts):]
    with pytest.raises(ValueError, match="one per image"):
        RepeatFactorPositionalDataset(dicts, seed=5, factors=factors[1:])


def _args(out, tiny_names, *extra, opts=()):
    argv = ["--config-file", LONGTAIL_CONFIG, *extra, "--vis-images", "-1",
            "OUTPUT_DIR", str(out), "DATASETS.TRAIN", f"('{tiny_names[0]}',)",
            "DATASETS.TEST", "()", *tiny_run_opts(batch=2, channels=16),
            "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "100",
            "TEST.EVAL_PERIOD", "0", "SEED", "3", "MODEL.RETINANET.NUM_CONVS", "1",
            "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
            "DATALOADER.REPEAT_THRESHOLD", "0.3", *opts]
    return engine.get_parser().parse_args(argv)


@pytest.mark.slow  # training / a child process
def test_repeat_factor_sampling_from_the_config_resumes_exactly(tiny, tmp_path, monkeypatch):
    import focal_det.engine.trainer as trainer_module

    names = ("focal_det_test_longtail_train",)
    _dicts(tiny)
    made = []

    class Spy(RepeatFactorPositionalDataset):
        def __init__(self, dicts, seed, factors):
            made.append((len(dicts), seed, factors))
            super().__init__(dicts, seed, factors)

    monkeypatch.setattr(trainer_module, "RepeatFactorPositionalDataset", Spy)
    full, cut = tmp_path / "full", tmp_path / "cut"
    engine.main(_args(full, names, opts=["SOLVER.MAX_ITER", "6"]))
    engine.main(_args(cut, names, opts=["SOLVER.MAX_ITER", "3"]))
    trainer = engine.Trainer(engine.setup(_args(cut, names, "--resume",
                                                opts=["SOLVER.MAX_ITER", "6"])))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3
    trainer.train()
    a = torch.load(full / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    b = torch.load(cut / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    # every run drew from the repeat-factor stream, with Detectron2's factors at 0.3
    dicts = [d for d in DatasetCatalog.get(names[0]) if d["annotations"]]
    assert len(made) == 4  # full, cut, and the resumed run's loader built twice (at iteration 3)
    for n, seed, factors in made:
        assert n == len(dicts) and seed == 3
        assert torch.equal(factors, repeat_factors(dicts, 0.3))


def test_repeat_threshold_is_checked_before_any_work(tiny, tmp_path):
    from focal_det.engine.run import preflight

    _dicts(tiny)
    args = _args(tmp_path / "bad", ("focal_det_test_longtail_train",),
                 opts=["DATALOADER.REPEAT_THRESHOLD", "0.0"])
    with pytest.raises(ValueError, match="DATALOADER.REPEAT_THRESHOLD=0.0"):
        preflight(args)
    assert not os.path.exists(tmp_path / "bad")


# ---------------------------------------------------------------- EFL on the long-tail config


@pytest.mark.slow  # training / a child process
def test_efl_config_trains_and_records_g_per_class(tiny, tmp_path):
    """configs/builtin/retinanet_R18_longtail_efl.yaml trains (s 4) and writes each class's g_j
    over training to class_stats.jsonl; the FL config writes none."""
    from focal_det.engine.class_stats import read_class_stats

    names = ("focal_det_test_longtail_train",)
    _dicts(tiny)
    efl_config = os.path.join(CONFIGS, "builtin", "retinanet_R18_longtail_efl.yaml")
    args = _args(tmp_path / "efl", names, opts=["SOLVER.MAX_ITER", "3"])
    args.config_file = efl_config  # _args' is the FL config
    engine.main(args)
    rows = read_class_stats(str(tmp_path / "efl"))
    assert [r["iteration"] for r in rows] == [2]  # the last iteration (period 20)
    g = rows[-1]["pos_neg"]
    assert len(g) == 34 and all(0.0 <= v <= 1.0 for v in g)
    assert min(g) < 1.0  # learned from 3 steps: no longer the start (g = 1, plain FL)
    engine.main(_args(tmp_path / "fl", names, opts=["SOLVER.MAX_ITER", "3"]))
    assert not os.path.exists(tmp_path / "fl" / "class_stats.jsonl")

    # the chart of g_j against the image counts (tools/g_chart.py)
    from focal_det.errors import FocalDetError
    from tests.common import load_script

    chart = load_script("tools/g_chart.py")
    with pytest.raises(FocalDetError, match="class_image_count"):
        chart.main(["--lines", str(tmp_path / "efl"), "--dataset", names[0],
                    "--output", str(tmp_path / "g.png")])
    MetadataCatalog.get(names[0]).set(class_image_count=TINY.image_counts(),
                                      class_frequency=TINY.frequencies())
    with pytest.raises(FocalDetError, match="no class_stats"):
        chart.main(["--lines", str(tmp_path / "fl"), "--dataset", names[0],
                    "--output", str(tmp_path / "g.png")])
    chart.main(["--lines", str(tmp_path / "efl"), "--dataset", names[0],
                "--output", str(tmp_path / "g.png")])
    assert os.path.getsize(tmp_path / "g.png") > 10_000
    (summary,) = json.loads((tmp_path / "g.json").read_text())["runs"].values()  # the numbers
    assert summary["iteration"] == 3 and -1 <= summary["spearman"] <= 1
    assert "| Spearman" in (tmp_path / "g.md").read_text()


def test_the_longtail_grid_is_fl_and_efl_with_and_without_rfs():
    """--grid longtail (docs/REPRODUCTION.md, Section 8): four configurations on the FL config,
    which differ only in the loss (EFL s 4) and the sampler (RFS at t 0.044)."""
    from focal_det.analysis.grids import GRIDS
    from focal_det.cli import load_yaml_config

    cfgs = {e.name: load_yaml_config(LONGTAIL_CONFIG, e.opts()) for e in GRIDS["longtail"]}
    assert list(cfgs) == ["fl", "fl_rfs", "efl_s4", "efl_s4_rfs"]
    for name, cfg in cfgs.items():
        loss = cfg.MODEL.FOCAL_DET.CLS_LOSS
        assert loss.NAME == ("EqualizedFocalLoss" if name.startswith("efl") else "FocalLoss")
        assert (loss.GAMMA, loss.ALPHA) == (2.0, 0.25)
        if name.startswith("efl"):
            assert loss.EFL_SCALE == 4.0
        rfs = name.endswith("_rfs")
        assert cfg.DATALOADER.SAMPLER_TRAIN == ("RepeatFactorTrainingSampler" if rfs
                                               else "TrainingSampler")
        assert cfg.DATALOADER.REPEAT_THRESHOLD == (0.044 if rfs else 0.0)
    efl = load_yaml_config(os.path.join(CONFIGS, "builtin", "retinanet_R18_longtail_efl.yaml"))
    assert efl.MODEL.FOCAL_DET.CLS_LOSS.dump() == cfgs["efl_s4"].MODEL.FOCAL_DET.CLS_LOSS.dump()
    # t 0.044 = 100 / the non-empty training images: a class in 100 images is not repeated,
    # one in a single image 10 times (LVIS v1's 0.001 over its 100k images)
    nonempty = sum(1 for cls in LongtailSpec().plan()[0] if cls)
    assert nonempty == 2278
    assert math.sqrt(0.044 / (100 / nonempty)) == pytest.approx(1.0, abs=0.01)
    assert math.sqrt(0.044 / (1 / nonempty)) == pytest.approx(10.0, abs=0.02)
