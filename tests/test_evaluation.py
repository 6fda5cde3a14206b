"""COCO evaluation: faster-coco-eval gives pycocotools' AP on the built-in val split; json files
without the optional "info"/"licenses" keys evaluate with either evaluator."""
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances

from focal_det.data.builtin import ShapesSpec, _write_split
from focal_det.evaluation import FocalCOCOEvaluator, cocoeval_in_use
from tests.common import register_coco


@pytest.fixture(scope="module")
def builtin_val(tmp_path_factory):
    """The built-in val split (same spec and seed as the registered one), written here."""
    folder = str(tmp_path_factory.mktemp("shapes"))
    spec = ShapesSpec()
    _write_split(folder, "val", spec.num_val, spec, spec.seed + 1)
    return os.path.join(folder, "val.json"), folder


def _register(name, json_file, root):
    register_coco(name, json_file, root)
    DatasetCatalog.get(name)  # sets thing_classes and the id mapping


def _noisy_predictions(dataset, seed=0):
    """Ground truth jittered, some classes swapped, plus false positives: AP well below 1."""
    rng = np.random.default_rng(seed)
    outputs = []
    for d in dataset:
        h, w = d["height"], d["width"]
        boxes, classes = [], []
        for a in d["annotations"]:
            x, y, bw, bh = a["bbox"]
            boxes.append([x, y, x + bw, y + bh] + rng.normal(0, 0.08 * max(bw, bh), 4))
            classes.append(a["category_id"] if rng.random() > 0.15 else rng.integers(0, 4))
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            boxes.append([x, y, x + rng.uniform(8, 40), y + rng.uniform(8, 40)])
            classes.append(rng.integers(0, 4))
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor(np.array(boxes).reshape(-1, 4), dtype=torch.float32))
        inst.scores = torch.tensor(rng.uniform(0.05, 1.0, len(boxes)), dtype=torch.float32)
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        outputs.append(({"image_id": d["image_id"]}, {"instances": inst}))
    return outputs


def _evaluate(name, outputs, tmp_path, monkeypatch, which):
    monkeypatch.setenv("FOCAL_DET_COCOEVAL", which)
    evaluator = FocalCOCOEvaluator(name, output_dir=str(tmp_path / which), distributed=False)
    evaluator.reset()
    for inp, out in outputs:
        evaluator.process([inp], [out])
    return evaluator.evaluate()["bbox"]


def test_faster_coco_eval_equals_pycocotools_on_the_builtin_val_split(builtin_val, tmp_path,
                                                                     monkeypatch):
    from faster_coco_eval import COCOeval_faster

    import focal_det.evaluation as fe

    used = []

    class Spy(COCOeval_faster):
        def evaluate(self):
            used.append(type(self).__mro__[1].__name__)
            return super().evaluate()

    monkeypatch.delenv("FOCAL_DET_COCOEVAL", raising=False)
    monkeypatch.setattr(fe, "faster_cocoeval", lambda: Spy)
    monkeypatch.setattr(fe, "has_real_extension", lambda: False)
    assert cocoeval_in_use() == "faster-coco-eval"
    _register("focal_det_test_eval_val", *builtin_val)
    outputs = _noisy_predictions(DatasetCatalog.get("focal_det_test_eval_val"))
    fast = _evaluate("focal_det_test_eval_val", outputs, tmp_path, monkeypatch, "auto")
    assert used == ["COCOeval_faster"]  # the fast evaluator really computed ``fast``
    official = _evaluate("focal_det_test_eval_val", outputs, tmp_path, monkeypatch, "pycocotools")
    assert 5 < official["AP"] < 95, official  # a real, non-trivial evaluation
    assert fast.keys() == official.keys()
    for metric, value in official.items():  # percent: 1e-4 of AP is 0.01 here
        same_nan = math.isnan(value) and math.isnan(fast[metric])  # e.g. APl: no large objects
        assert same_nan or abs(fast[metric] - value) <= 1e-2, (metric, fast[metric], value)


@pytest.mark.parametrize("which", ["auto", "pycocotools"])
def test_json_without_info_and_licenses_evaluates(builtin_val, tmp_path, monkeypatch, which):
    json_file, root = builtin_val
    with open(json_file) as f:
        coco = json.load(f)
    coco.pop("info", None)
    coco.pop("licenses", None)
    stripped = tmp_path / "no_info.json"
    stripped.write_text(json.dumps(coco))
    _register("focal_det_test_eval_noinfo", str(stripped), root)
    outputs = _noisy_predictions(DatasetCatalog.get("focal_det_test_eval_noinfo"))[:20]
    result = _evaluate("focal_det_test_eval_noinfo", outputs, tmp_path, monkeypatch, which)
    assert 0 < result["AP"] <= 100
