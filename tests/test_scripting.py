"""torch.jit.script of FocalRetinaNet (focal_det.modeling.scripting), the way Detectron2 scripts
its RetinaNet: scripted output equals eager output (Detectron2's test recipe: scripted
Instances converted back + detector_postprocess), for FL and FL*, with BN heads (Detectron2's
CycleBatchNormList), FrozenBN backbones, folding on and off, batches of differently sized images,
and after a save/load round trip. The eager model is left unchanged."""
import io
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess

import focal_det
from focal_det.losses import CLS_LOSS_REGISTRY
from focal_det.losses.registry import FocalLoss
from focal_det.modeling.fold import FoldedNormConv2d
from focal_det.modeling.scripting import prepare_for_scripting, script_model, to_instances
from tests.common import CONFIGS

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:FutureWarning",
    "ignore:`torch.jit.load` is deprecated:FutureWarning",
    "ignore:`torch.jit.save` is deprecated:FutureWarning")

BUILTIN = os.path.join(CONFIGS, "builtin", "retinanet_R18_shapes.yaml")
FLSTAR = ["MODEL.FOCAL_DET.CLS_LOSS.NAME", "FocalLossStar", "MODEL.FOCAL_DET.CLS_LOSS.BETA", "1.0"]
EFL = ["MODEL.FOCAL_DET.CLS_LOSS.NAME", "EqualizedFocalLoss"]  # a loss with buffers (statistics)


def _model(config=BUILTIN, opts=()):
    cfg = focal_det.get_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # untrained, but with non-trivial norms and scores above threshold
        for m in model.modules():
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        model.head.cls_score.weight.mul_(30.0)
        model.head.cls_score.bias.fill_(-1.5)
    return model


def _inputs():
    g = torch.Generator().manual_seed(2)
    return [{"image": torch.rand(3, 64, 64, generator=g) * 255},
            {"image": torch.rand(3, 96, 128, generator=g) * 255}]


def _assert_scripted_equals_eager(model, scripted, inputs, exact=True):
    with torch.no_grad():
        eager = model(inputs)
        out = scripted(inputs)
    assert len(out) == len(inputs)
    for e, s, x in zip(eager, out, inputs):
        e = e["instances"]
        s = detector_postprocess(to_instances(s), *x["image"].shape[1:])
        assert len(e) > 0 and len(e) == len(s), (len(e), len(s))
        assert torch.equal(e.pred_classes, s.pred_classes)
        if exact:
            assert torch.equal(e.scores, s.scores)
            assert torch.equal(e.pred_boxes.tensor, s.pred_boxes.tensor)
        else:  # unfolded eager convs vs folded scripted ones: float rounding only
            torch.testing.assert_close(s.scores, e.scores, rtol=0, atol=1e-5)
            torch.testing.assert_close(s.pred_boxes.tensor, e.pred_boxes.tensor,
                                       rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("opts", [[], FLSTAR, EFL], ids=["FL", "FLstar", "EFL"])
def test_scripted_builtin_model_equals_eager(opts):
    model = _model(opts=opts)
    _assert_scripted_equals_eager(model, script_model(model), _inputs())


@pytest.mark.slow
def test_scripted_model_without_folding_matches_eager():
    model = _model(opts=["MODEL.FOCAL_DET.FOLD_NORMS", "False"])
    _assert_scripted_equals_eager(model, script_model(model), _inputs(), exact=False)


def test_scripted_paper_model_equals_eager():
    """R50-FPN with FrozenBN and an unnormalized head, as the paper (and Detectron2) has it."""
    model = _model(os.path.join(CONFIGS, "retinanet_R50_FPN_1x.yaml"))
    _assert_scripted_equals_eager(model, script_model(model), _inputs()[:1])


def test_scripted_model_survives_save_and_load():
    model = _model(opts=FLSTAR)
    buffer = io.BytesIO()
    torch.jit.save(script_model(model), buffer)
    buffer.seek(0)
    _assert_scripted_equals_eager(model, torch.jit.load(buffer), _inputs())


def test_scripting_leaves_the_eager_model_unchanged():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = sum(isinstance(m, FoldedNormConv2d) for m in model.modules())
    prepare_for_scripting(model)
    assert folded > 0 and folded == sum(isinstance(m, FoldedNormConv2d) for m in model.modules())
    assert model.cls_loss is not None
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_refuses_training_mode_and_losses_without_an_affine_probability():
    model = _model()
    with pytest.raises(ValueError, match="model.eval"):
        prepare_for_scripting(model.train())

    class SquashedLoss(FocalLoss):
        def probs(self, logits):
            return torch.sigmoid(logits) ** 2

    model.eval().cls_loss = SquashedLoss()
    with pytest.raises(ValueError, match="SquashedLoss.*probs_affine"):
        prepare_for_scripting(model)
    assert "SquashedLoss" not in CLS_LOSS_REGISTRY  # not registered: a local test class
