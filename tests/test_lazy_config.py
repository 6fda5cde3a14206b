"""LazyConfig (.py) configs and keyword builds: FocalRetinaNet built from keywords, from a
LazyConfig and from a .yaml config is the same model (parameter names, shapes, values, loss on
one batch); overrides take effect; train_net.py trains and evaluates from a .py config; every
config loads, with the anchors and input sizes it promises."""
import copy
import glob
import os

import pytest
import torch
from detectron2.config import instantiate
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_det import cli, engine
from focal_det.data import ShapesSpec, ensure_generated
from focal_det.losses import FocalLossStar
from focal_det.modeling import FocalRetinaNet
from tests.common import CONFIGS, random_batch

LAZY = os.path.join(CONFIGS, "lazy")
SHAPES_PY = os.path.join(LAZY, "retinanet_R18_shapes.py")
SHAPES_YAML = os.path.join(CONFIGS, "builtin", "retinanet_R18_shapes.yaml")


def _same_parameters(a, b):
    pa, pb = a.state_dict(), b.state_dict()
    assert list(pa) == list(pb)
    for k in pa:
        assert pa[k].shape == pb[k].shape, k
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=0, msg=k)


def _loss(model, batch):
    model.train()
    with EventStorage():
        losses = model(copy.deepcopy(batch))
    return {k: v.detach() for k, v in losses.items()}


@pytest.mark.parametrize("opts", [[], ["MODEL.FOCAL_DET.CLS_LOSS.NAME", "FocalLossStar",
                                       "MODEL.FOCAL_DET.HEAD.PRIOR_PROB", "0.05"]])
def test_lazy_model_equals_the_yaml_model(opts):
    """Same parameter names, shapes and values from the same seed, and the same loss."""
    ycfg = cli.load_yaml_config(SHAPES_YAML, opts)
    overrides = []
    if opts:
        overrides = ["model.cls_loss._target_=focal_det.losses.FocalLossStar",
                     "model.cls_loss.beta=1.0", "model.prior_prob=0.05"]
    lcfg = cli.load_config(SHAPES_PY, overrides)
    torch.manual_seed(0)
    yaml_model = build_model(ycfg)
    torch.manual_seed(0)
    lazy_model = instantiate(lcfg.model)
    _same_parameters(lazy_model, yaml_model)
    assert repr(lazy_model.cls_loss) == repr(yaml_model.cls_loss)
    batch = random_batch(num_images=2, num_classes=4, size=(64, 96))
    a, b = _loss(lazy_model, batch), _loss(yaml_model, batch)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=0)


def test_keyword_build_applies_the_loss_bias_rule():
    """A model built from keywords (here FL* with the prior) gets the same class bias, and every
    other parameter, as the same model built from a cfg: __init__ sets it, not from_config."""
    cfg = cli.load_yaml_config(SHAPES_YAML, ["MODEL.FOCAL_DET.CLS_LOSS.NAME", "FocalLossStar",
                                             "MODEL.FOCAL_DET.CLS_LOSS.GAMMA", "4.0",
                                             "MODEL.FOCAL_DET.CLS_LOSS.BETA", "0.0"])
    torch.manual_seed(0)
    from_cfg = build_model(cfg)
    torch.manual_seed(0)
    kwargs = FocalRetinaNet.from_config(cfg)
    kwargs["cls_loss"] = FocalLossStar(gamma=4.0, beta=0.0, alpha=0.25)
    by_keywords = FocalRetinaNet(**kwargs)
    _same_parameters(by_keywords, from_cfg)
    bias = by_keywords.head.cls_score.bias
    prior = by_keywords.cls_loss.probs(bias.double())
    torch.testing.assert_close(prior, torch.full_like(prior, 0.01))
    # and the initializer is a real choice: Zero gives 0
    kwargs = FocalRetinaNet.from_config(cfg)
    assert FocalRetinaNet(**{**kwargs, "bias_init": "Zero"}).head.cls_score.bias.abs().max() == 0


def test_overrides_take_effect_and_bad_ones_are_named(tmp_path):
    cfg = cli.load_config(SHAPES_PY, ["model.cls_loss.gamma=1", "train.max_iter=7"])
    model = instantiate(cfg.model)
    assert model.cls_loss.gamma == 1.0 and cfg.train.max_iter == 7
    with pytest.raises(ValueError, match="key=value.*'train.max_iter'"):
        cli.load_config(SHAPES_PY, ["train.max_iter", "7"])
    with pytest.raises(ValueError, match="does not exist"):
        cli.load_config(str(tmp_path / "nope.py"))
    bad = tmp_path / "cfg.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="expected a .yaml or a LazyConfig .py"):
        cli.load_config(str(bad))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(LAZY, "*.py"))))
def test_every_lazy_config_builds(path):
    """Each .py config instantiates its model (80 or 4 classes, 9 anchors per location) with
    the paper's loss and prior, without downloading anything."""
    cfg = cli.load_config(path, ["train.device=cpu", "model.backbone.bottom_up.freeze_at=0"])
    model = instantiate(cfg.model)
    assert isinstance(model, FocalRetinaNet)
    assert model.anchor_generator.num_cell_anchors == [9] * 5
    p = model.cls_loss.probs(model.head.cls_score.bias.double())
    torch.testing.assert_close(p, torch.full_like(p, cfg.model.prior_prob))
    assert cfg.dataloader.test.mapper.augmentations[0].short_edge_length in (800, 128)


@pytest.mark.slow
def test_train_net_trains_and_evaluates_from_a_py_config(tmp_path):
    """A few iterations from the .py config on tiny generated data, then --eval-only of the
    result; an override (the loss's gamma) reaches the trained model."""
    spec = ShapesSpec(num_train=6, num_val=3, image_size=64, max_objects=3, min_size=12,
                      max_size=40)
    folder = ensure_generated(spec, root=str(tmp_path / "data"))
    out = tmp_path / "out"
    data = ["--register-coco", "lazy_train", os.path.join(folder, "train.json"), folder,
            "--register-coco", "lazy_val", os.path.join(folder, "val.json"), folder]
    common = ["dataloader.train.dataset.names=lazy_train", "dataloader.test.dataset.names=lazy_val",
              "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
              "dataloader.test.num_workers=0", f"train.output_dir={out}"]
    args = engine.get_parser().parse_args(
        ["--config-file", SHAPES_PY, *data, *common, "train.max_iter=3", "train.eval_period=0",
         "lr_multiplier.scheduler.milestones=[1,2]", "lr_multiplier.scheduler.num_updates=3",
         "model.cls_loss.gamma=1"])
    engine.preflight(args)
    res = engine.main(args)
    assert "bbox" in res and set(res["bbox"]) >= {"AP", "AP50"}
    assert os.path.isfile(out / "model_final.pth")
    assert "gamma: 1" in (out / "config.yaml").read_text()
    args = engine.get_parser().parse_args(
        ["--config-file", SHAPES_PY, "--eval-only", *data, *common,
         f"train.init_checkpoint={out / 'model_final.pth'}"])
    res2 = engine.main(args)
    assert res2["bbox"]["AP"] == pytest.approx(res["bbox"]["AP"], abs=1e-6)


def test_the_engine_view_of_a_py_config_carries_its_settings_or_refuses_them():
    """What the one Trainer reads of a .py config (focal_det.lazy_run): every train/dataloader
    setting it uses, and a DDP setting it cannot honour is an error, not ignored."""
    from focal_det.errors import FocalDetError
    from focal_det.lazy_run import run_config

    view = run_config(cli.load_config(SHAPES_PY, [
        "train.output_dir=/tmp/x", "train.max_iter=7", "train.amp.enabled=True",
        "train.checkpointer.max_to_keep=2", "train.log_period=5", "train.seed=11"]))
    assert (view.OUTPUT_DIR, view.SOLVER.MAX_ITER, view.SEED) == ("/tmp/x", 7, 11)
    assert view.SOLVER.AMP.ENABLED and view.SOLVER.AMP.PRECISION == "auto"
    assert view.DATASETS.TRAIN == ("focal_det_shapes_train",)
    assert view.DATASETS.TEST == ("focal_det_shapes_val",)
    assert (view.SOLVER.IMS_PER_BATCH, view.INPUT.MIN_SIZE_TEST, view.MODEL.DEVICE) == (8, 128,
                                                                                       "cpu")
    assert (view.max_to_keep, view.log_period, view.key("MODEL.WEIGHTS")) == (
        2, 5, "train.init_checkpoint")
    with pytest.raises(FocalDetError, match="train.ddp=.*fp16_compression"):
        run_config(cli.load_config(SHAPES_PY, ["train.ddp.fp16_compression=True"]))
