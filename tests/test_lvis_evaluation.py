"""LVIS evaluation on NumPy 2 (focal_det/lvis_evaluation.py): the compatibility fix finds and
fixes exactly the removed NumPy aliases a module uses; LVISEval's AP, APr, APc, APf on a
federated fixture equal hand-computed values; on exhaustively annotated data LVISEval equals
pycocotools' COCOeval; the trainer picks the evaluator by evaluator_type; and
``train_net.py --eval-only`` on Detectron2's own ``lvis_v1_val`` (a fixture in its layout)
reports APr/APc/APf."""
import json
import os
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import Boxes, Instances

from focal_det import lvis_evaluation as le
from focal_det.data import LongtailSpec, ensure_generated
from focal_det.evaluation import FocalCOCOEvaluator, build_evaluator
from tests.common import CONFIGS, REPO, register_coco, run_child, tiny_run_opts

# ---------------------------------------------------------------- the NumPy 2 fix

OLD_STYLE = '''
import numpy as np
import numpy
def to_float(x):
    return np.cumsum(x).astype(dtype=np.float)
class Holder:
    def count(self, x):
        return [numpy.int(v) for v in x]
    def fine(self, x):
        return np.float32(x), np.int64(x)
'''


def _module(source, name="focal_det_test_old_numpy"):
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)
    return module


def test_the_fix_finds_and_adds_only_the_aliases_a_module_uses():
    module = _module(OLD_STYLE)
    assert le.removed_aliases_used(module) == {"float", "int"}  # not np.float32 / np.int64
    if not hasattr(np, "float"):  # NumPy >= 1.24 (the pinned stack): it is broken as written
        with pytest.raises(AttributeError, match="float"):
            module.to_float([1, 2])
    assert le.patch_module(module) == sorted(a for a in ("float", "int") if not hasattr(np, a))
    assert module.to_float([1, 2]).tolist() == [1.0, 3.0]
    assert module.Holder().count([1.5, 2.5]) == [1, 2]
    assert module.np.float is float and module.np.cumsum is np.cumsum
    assert le.patch_module(module) == []  # idempotent
    assert not hasattr(np, "float") or np.float is float  # NumPy itself untouched
    clean = _module("import numpy as np\ndef f(x):\n    return np.float64(x)\n", "clean")
    assert le.removed_aliases_used(clean) == set() and le.patch_module(clean) == []
    assert clean.np is np


def test_lvis_0_5_3_needs_it_here_and_gets_it(monkeypatch):
    import lvis.eval

    le.ensure_lvis_numpy_compat()
    used = le.removed_aliases_used(lvis.eval)
    needed = sorted(a for a in used if not hasattr(np, a))
    if needed:  # the pinned stack: lvis 0.5.3's accumulate calls np.float, NumPy 2 lacks it
        assert isinstance(lvis.eval.np, le.NumpyWithAliases)
        monkeypatch.setattr(lvis.eval, "np", np)  # as lvis ships, on this NumPy
        with pytest.raises(AttributeError, match="float"):
            _fixture_eval(fix=False)
        monkeypatch.undo()
    assert _fixture_eval(fix=False)["APr"] == pytest.approx(100 * _expected()["APr"])
    assert le.ensure_lvis_numpy_compat() == {}  # applied once, then nothing to do


# ---------------------------------------------------------------- a federated fixture


def _fixture(tmp_path=None):
    """3 images, classes 1 (r), 2 (c), 3 (f); the detections' expected AP is computed by hand
    in test_hand_computed_ap."""
    def img(i, neg, nel):
        return {"id": i, "file_name": f"{i}.jpg", "height": 64, "width": 64,
                "neg_category_ids": neg, "not_exhaustive_category_ids": nel}

    def ann(i, image_id, cat, box):
        return {"id": i, "image_id": image_id, "category_id": cat, "bbox": box,
                "area": float(box[2] * box[3]), "iscrowd": 0}

    gt = {"images": [img(1, [2], []), img(2, [1], [3]), img(3, [3], [])],
          "annotations": [ann(1, 1, 1, [0, 0, 20, 20]), ann(2, 1, 3, [30, 30, 20, 20]),
                          ann(3, 2, 2, [0, 0, 20, 20]), ann(4, 2, 3, [30, 30, 20, 20]),
                          ann(5, 3, 2, [10, 10, 20, 20])],
          "categories": [{"id": 1, "name": "one", "frequency": "r"},
                         {"id": 2, "name": "two", "frequency": "c"},
                         {"id": 3, "name": "three", "frequency": "f"}]}

    def det(image_id, cat, box, score):
        return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}

    dets = [det(3, 1, [40, 40, 10, 10], 0.99),  # r, image 3: neither present nor negative
            det(2, 1, [40, 0, 10, 10], 0.95),  # r, image 2: listed negative -> false positive
            det(1, 1, [0, 0, 20, 20], 0.90),  # r: true positive
            det(1, 2, [40, 0, 10, 10], 0.85),  # c, image 1: negative -> false positive
            det(2, 2, [0, 0, 20, 20], 0.80),  # c: true positive
            det(3, 2, [10, 10, 20, 15.2], 0.70),  # c: IoU .76, true positive up to IoU .75
            det(3, 3, [40, 0, 10, 10], 0.90),  # f, image 3: negative -> false positive
            det(2, 3, [0, 40, 10, 10], 0.65),  # f, image 2: not exhaustive -> ignored
            det(1, 3, [30, 30, 20, 20], 0.60)]  # f: true positive; image 2's f never found
    return gt, dets


def _fixture_eval(fix=True):
    """The fixture through ``evaluate_lvis_boxes`` (``fix``) or LVISEval as Detectron2 calls it,
    on whatever ``np`` lvis.eval has now."""
    import tempfile

    from lvis import LVIS, LVISEval, LVISResults

    gt, dets = _fixture()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(gt, f)
    try:
        if fix:
            return le.evaluate_lvis_boxes(LVIS(f.name), [dict(d) for d in dets],
                                          class_names=["one", "two", "three"])
        lvis_gt = LVIS(f.name)
        ev = LVISEval(lvis_gt, LVISResults(lvis_gt, [dict(d) for d in dets]), "bbox")
        ev.run()
        return {k: 100 * v for k, v in ev.get_results().items()}
    finally:
        os.remove(f.name)


def _expected():
    # Recall thresholds at or below .5 (LVIS: 101 from 0 to 1); beyond the largest recall a
    # class reaches, precision is 0.
    half = np.count_nonzero(np.linspace(0.0, 1.0, 101) <= 0.5) / 101  # 51 / 101
    ap_r = 0.5  # FP (.95) above the TP: precision 1/2 at recall 1 (the .99 is not counted)
    # c: 6 IoU thresholds (.5-.75): FP, TP, TP -> precision 2/3 up to recall 1;
    #    4 thresholds (.8-.95): FP, TP, FP -> precision 1/2 up to recall 1/2
    ap_c = (6 * (2 / 3) + 4 * 0.5 * half) / 10
    ap_f = 0.5 * half  # FP, (ignored), TP: precision 1/2 up to recall 1/2, every threshold
    return {"AP": (ap_r + ap_c + ap_f) / 3, "APr": ap_r, "APc": ap_c, "APf": ap_f}


def test_hand_computed_ap_on_a_federated_fixture():
    res = _fixture_eval()
    for metric, value in _expected().items():
        assert res[metric] == pytest.approx(100 * value, abs=1e-9), metric
    assert res["APs"] == pytest.approx(res["AP"], abs=1e-9)  # every box is small
    assert res["APm"] == res["APl"] == -100.0  # LVIS's "no such objects"
    assert res["AP-one"] == pytest.approx(50.0, abs=1e-9)
    assert res["AP-three"] == pytest.approx(100 * _expected()["APf"], abs=1e-9)


def _register_fixture(tmp_path) -> str:
    """The fixture as a registered dataset whose metadata says evaluator_type "lvis"."""
    gt, _ = _fixture()
    json_file = tmp_path / "fixture.json"
    json_file.write_text(json.dumps(gt))
    name = "focal_det_test_lvis_fixture"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_json(str(json_file), str(tmp_path), name))
    MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(tmp_path),
                                  evaluator_type="lvis")
    DatasetCatalog.get(name)  # thing_classes and the id mapping
    return name


def test_the_evaluator_maps_ids_and_reports_the_same_numbers(tmp_path):
    _, dets = _fixture()
    name = _register_fixture(tmp_path)
    evaluator = build_evaluator(name, output_dir=str(tmp_path / "out"), distributed=False)
    assert isinstance(evaluator, le.FocalLVISEvaluator)
    evaluator.reset()
    for image_id in (1, 2, 3):
        mine = [d for d in dets if d["image_id"] == image_id]
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                                              (d["bbox"] for d in mine)], dtype=torch.float64))
        inst.scores = torch.tensor([d["score"] for d in mine])
        inst.pred_classes = torch.tensor([d["category_id"] - 1 for d in mine])
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    res = evaluator.evaluate()["bbox"]
    for metric, value in _expected().items():  # boxes went through float32: 1e-4 of a pixel
        assert res[metric] == pytest.approx(100 * value, abs=1e-6), metric
    assert (tmp_path / "out" / "lvis_instances_results.json").exists()
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [{"instances": Instances((64, 64), pred_boxes=Boxes(
        torch.zeros(0, 4)), scores=torch.zeros(0), pred_classes=torch.zeros(0).long())}])
    nothing = evaluator.evaluate()["bbox"]  # nothing detected: 0, not NaN; -100 as LVISEval
    assert {m: nothing[m] for m in ("AP", "APs", "APm", "APl", "APr", "APc", "APf")} == {
        "AP": 0.0, "APs": 0.0, "APm": -100.0, "APl": -100.0, "APr": 0.0, "APc": 0.0, "APf": 0.0}
    assert nothing["APm"] == res["APm"] and nothing["APl"] == res["APl"]  # as with detections


# ---------------------------------------------------------------- LVISEval = COCOeval


def test_lvis_equals_cocoeval_on_exhaustive_generated_data(tmp_path):
    from lvis import LVIS
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    spec = LongtailSpec(num_train=400, max_images=150, val_per_class=3, image_size=64,
                        min_size=10, max_size=26)
    folder = ensure_generated(spec, root=str(tmp_path))
    json_file = os.path.join(folder, "val.json")
    with open(json_file) as f:
        gt = json.load(f)
    rng = np.random.default_rng(0)
    dets = []
    for a in gt["annotations"]:  # jittered, some with a wrong class, plus false positives
        x, y, w, h = a["bbox"]
        box = [float(v) for v in np.array([x, y, w, h]) + rng.normal(0, 0.1 * max(w, h), 4)]
        box[2], box[3] = max(box[2], 1.0), max(box[3], 1.0)
        cat = a["category_id"] if rng.random() > 0.2 else int(rng.integers(1, 35))
        dets.append({"image_id": a["image_id"], "category_id": cat, "bbox": box,
                     "score": float(rng.random())})
    for img in gt["images"]:
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 50, 2)
            dets.append({"image_id": img["id"], "category_id": int(rng.integers(1, 35)),
                         "bbox": [float(x), float(y), 12.0, 12.0], "score": float(rng.random())})
    res = le.evaluate_lvis_boxes(LVIS(json_file), [dict(d) for d in dets])
    coco = COCO(json_file)
    ev = COCOeval(coco, coco.loadRes([dict(d) for d in dets]), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 5 < res["AP"] < 95, res  # a real, non-trivial evaluation
    for i, metric in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        assert res[metric] == pytest.approx(100 * ev.stats[i], abs=1e-9), metric
    assert {res["APr"], res["APc"], res["APf"]} != {res["AP"]}  # the groups differ


def test_the_yaml_trainer_picks_the_evaluator_by_evaluator_type(tmp_path):
    import focal_det
    from focal_det.engine import Trainer

    cfg = focal_det.get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    lvis_name = _register_fixture(tmp_path)
    register_coco("focal_det_test_coco_fixture", str(tmp_path / "fixture.json"), str(tmp_path))
    assert isinstance(Trainer.build_evaluator(cfg, "focal_det_test_coco_fixture"),
                      FocalCOCOEvaluator)
    assert isinstance(Trainer.build_evaluator(cfg, lvis_name), le.FocalLVISEvaluator)


# ---------------------------------------------------------------- the real-LVIS user's path


def _lvis_v1_layout(root):
    """Detectron2's lvis_v1_val layout under ``root``: lvis/lvis_v1_val.json (LVIS v1's 1,203
    categories, images named by coco_url) and coco/val2017/*.jpg."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    cats = [{"id": c["id"], "name": c["name"], "frequency": c["frequency"]}
            for c in LVIS_CATEGORIES]
    picks = {f: next(c["id"] for c in LVIS_CATEGORIES if c["frequency"] == f) for f in "rcf"}
    os.makedirs(os.path.join(root, "coco", "val2017"))
    os.makedirs(os.path.join(root, "lvis"))
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i, f in enumerate("rcf", start=1):
        name = f"{i:012d}.jpg"
        cv2.imwrite(os.path.join(root, "coco", "val2017", name),
                    rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        images.append({"id": i, "height": 64, "width": 64,
                       "coco_url": f"http://images.cocodataset.org/val2017/{name}",
                       "neg_category_ids": [picks[g] for g in "rcf" if g != f],
                       "not_exhaustive_category_ids": []})
        anns.append({"id": i, "image_id": i, "category_id": picks[f], "bbox": [8, 8, 40, 40],
                     "area": 1600.0, "segmentation": [[8, 8, 48, 8, 48, 48, 8, 48]]})
    with open(os.path.join(root, "lvis", "lvis_v1_val.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)


@pytest.mark.slow  # training / a child process
def test_train_net_eval_only_on_detectron2s_lvis_v1_val(tmp_path):
    root = tmp_path / "datasets"
    _lvis_v1_layout(str(root))
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
           os.path.join(CONFIGS, "builtin", "retinanet_R18_longtail.yaml"), "--eval-only",
           "--vis-images", "-1", "OUTPUT_DIR", str(tmp_path / "out"),
           "DATASETS.TRAIN", "('lvis_v1_val',)", "DATASETS.TEST", "('lvis_v1_val',)",
           "MODEL.RETINANET.NUM_CLASSES", "1203",
           "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", *tiny_run_opts(channels=16),
           "MODEL.RETINANET.NUM_CONVS", "1"]
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1")
    out = run_child(cmd, timeout=600, env=env).stdout
    lines = [line.split("copypaste: ", 1)[1] for line in out.splitlines() if "copypaste: " in line]
    assert "AP,AP50,AP75,APs,APm,APl,APr,APc,APf" in lines, out[-3000:]
    values = [float(v) for v in lines[lines.index("AP,AP50,AP75,APs,APm,APl,APr,APc,APf") + 1]
              .split(",")]
    apr, apc, apf = values[6:]
    for v in (apr, apc, apf):  # each group has ground truth (-100: an empty group)
        assert 0.0 <= v <= 100.0, (values, out[-3000:])
    assert "AttributeError" not in out


def test_a_py_config_picks_the_evaluator_by_evaluator_type_too(tmp_path):
    from focal_det import cli
    from focal_det.engine import Trainer
    from focal_det.lazy_run import run_config

    name = _register_fixture(tmp_path)
    lazy = cli.load_config(os.path.join(CONFIGS, "lazy", "retinanet_R18_shapes.py"),
                           [f"train.output_dir={tmp_path / 'out'}"])
    cfg = run_config(lazy)
    assert isinstance(Trainer.build_evaluator(cfg, name), le.FocalLVISEvaluator)
    register_coco("focal_det_test_coco_fixture", str(tmp_path / "fixture.json"), str(tmp_path))
    assert isinstance(Trainer.build_evaluator(cfg, "focal_det_test_coco_fixture"),
                      FocalCOCOEvaluator)


@pytest.mark.parametrize("drop", ["frequency", "neg_category_ids", "not_exhaustive_category_ids"])
def test_preflight_names_what_lvis_evaluation_would_miss(tmp_path, drop):
    from focal_det.preflight import PreflightError, check_datasets

    name = _register_fixture(tmp_path)
    gt = json.loads((tmp_path / "fixture.json").read_text())
    for i in (1, 2, 3):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), np.zeros((64, 64, 3), np.uint8))
    check_datasets([name])  # sound as written
    where = gt["categories"] if drop == "frequency" else gt["images"]
    where[0].pop(drop)
    (tmp_path / "fixture.json").write_text(json.dumps(gt))
    with pytest.raises(PreflightError, match=drop) as e:
        check_datasets([name])
    assert "fixture.json" in str(e.value) and name in str(e.value)
