"""The analysis tools read a LazyConfig ``.py`` config as ``train_net.py`` does (its
``LazyRunConfig`` view, ``cli.load_run_config``), tested on the built-in
``configs/lazy/retinanet_R18_shapes.py``: it is the same model, data and resizes as
``configs/builtin/retinanet_R18_shapes.yaml`` (``tests/test_lazy_config.py``), so every tool
must give the same numbers from either file."""
import math
import os

import numpy as np
import pytest
import torch

from focal_det import cli
from focal_det.analysis import feature_rms as F
from focal_det.analysis.imbalance import measure
from focal_det.checkpoint import FocalCheckpointer
from focal_det.inference import inference_spec
from focal_det.lazy_run import LazyRunConfig
from tests.common import CONFIGS, TINY_SHAPES, load_script, tiny_shapes_datasets

easy_negatives = load_script("tools/easy_negatives.py")
imbalance = load_script("tools/imbalance.py")
loss_distribution = load_script("tools/loss_distribution.py")
paper_diagnosis = load_script("tools/paper_diagnosis.py")

SHAPES_PY = os.path.join(CONFIGS, "lazy", "retinanet_R18_shapes.py")
SHAPES_YAML = os.path.join(CONFIGS, "builtin", "retinanet_R18_shapes.yaml")
# The same tiny data set for both kinds, each in its own override syntax.
YAML_DATA = ["DATASETS.TRAIN", "('lazy_tools_train',)", "DATASETS.TEST", "('lazy_tools_val',)"]
PY_DATA = ["dataloader.train.dataset.names=lazy_tools_train",
           "dataloader.test.dataset.names=lazy_tools_val"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes_datasets(str(tmp_path_factory.mktemp("data")), "lazy_tools")


def _close(a, b, what):
    """Every number in ``a`` equals ``b``'s (1e-5 relative), recursively."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _close(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{what}[{i}]")
    elif isinstance(a, float) and not (math.isinf(a) and a == b):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-9), what
    else:
        assert a == b, what


def test_the_run_config_of_a_py_file_is_the_engines_view():
    cfg = cli.load_run_config(SHAPES_PY, ["train.max_iter=5"], device="cpu")
    assert isinstance(cfg, LazyRunConfig) and cfg.SOLVER.MAX_ITER == 5
    assert cfg.MODEL.DEVICE == "cpu" and cfg.lazy.train.device == "cpu"
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (128, 128)
    assert inference_spec(cfg).test_dataset == "focal_det_shapes_val"
    yaml = cli.load_run_config(SHAPES_YAML)
    assert not isinstance(yaml, LazyRunConfig) and yaml.SOLVER.MAX_ITER == 2700
    with pytest.raises(cli.ConfigFileError, match="key=value"):
        cli.load_run_config(SHAPES_PY, ["train.max_iter", "5"])


def test_imbalance_counts_a_py_config_as_its_yaml_twin(data, tmp_path):
    (py_row, paper) = imbalance.main(["--config-file", SHAPES_PY, "--output", str(tmp_path),
                                      *PY_DATA])
    yaml_row = measure(SHAPES_YAML, 0, YAML_DATA)
    assert py_row["config"].endswith("retinanet_R18_shapes.py")
    assert py_row["images"] == TINY_SHAPES.num_train and py_row["positives"] > 0
    _close({k: v for k, v in py_row.items() if k != "config"},
           {k: v for k, v in yaml_row.items() if k != "config"}, "imbalance")
    assert "lazy_tools_train" in (tmp_path / "imbalance.md").read_text()


def test_easy_negatives_of_a_py_config_equal_its_yaml_twins(data, tmp_path):
    common = ["--model", "init=init", "--num-images", "3"]
    py = easy_negatives.main(["--config-file", SHAPES_PY, *common,
                              "--output", str(tmp_path), *PY_DATA])
    yaml = easy_negatives.main(["--config-file", SHAPES_YAML, *common, *YAML_DATA])
    assert [r["dataset"] for r in py] == ["lazy_tools_val"] * 2  # the config's test set
    _close(py, yaml, "easy_negatives")
    assert "| init |" in (tmp_path / "easy_negatives.md").read_text()


def test_loss_distribution_of_a_py_config_equals_its_yaml_twins(data, tmp_path):
    torch.manual_seed(0)
    model = inference_spec(cli.load_run_config(SHAPES_YAML, device="cpu")).build_model()
    FocalCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    weights = str(tmp_path / "weights.pth")
    common = ["--weights", weights, "--num-images", "2", "--gammas", "0", "2"]
    py = loss_distribution.main(["--config-file", SHAPES_PY, *common,
                                 "--output", str(tmp_path / "py"), *PY_DATA])
    yaml = loss_distribution.main(["--config-file", SHAPES_YAML, *common,
                                   "--output", str(tmp_path / "yaml"), *YAML_DATA])
    assert py["dataset"] == "lazy_tools_val" and py["counts"]["foreground_anchors"] > 0
    for name in ("positive", "negative"):
        assert py[name]["count"] == yaml[name]["count"] > 0
        _close(py[name]["gammas"], yaml[name]["gammas"], name)


def test_rms_of_a_py_config_changes_its_width_and_equals_its_yaml_twin(data, tmp_path):
    common = ["--weights", "", "--num-images", "2", "--widths", "32",
              "--head-weight-init", "fixed", "width_preserving", "--seeds", "0"]
    np.random.seed(0)  # the training mapper's random flips: the same draws for both
    py = paper_diagnosis.main(["rms", "--config-file", SHAPES_PY, *common,
                               "--output", str(tmp_path / "py"), *PY_DATA])
    np.random.seed(0)
    yaml = paper_diagnosis.main(["rms", "--config-file", SHAPES_YAML, *common,
                                 "--output", str(tmp_path / "yaml"), *YAML_DATA])
    # The towers end in BN + ReLU; the class conv's gain is sqrt(256 / 32) with the
    # width-preserving init at 32 channels, so the logits' spread grows by that factor.
    fixed, preserving = (r["rms"] for r in py)
    assert preserving["logits_std"] / fixed["logits_std"] == pytest.approx(math.sqrt(8), rel=1e-3)
    _close([r["rms"] for r in py], [r["rms"] for r in yaml], "rms")
    model = inference_spec(F.variant_config(SHAPES_PY, PY_DATA, 32, "fixed")).build_model()
    assert model.head.cls_score.in_channels == 32
    assert model.backbone.output_shape()["p3"].channels == 32
