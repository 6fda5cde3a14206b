"""What the trainer checkpoints of a model beyond its state_dict: FocalRetinaNet answers through
``training_state()`` / ``load_training_state()`` (its contract), Detectron2's RetinaNet through
the same EMA normalizer; ``Trainer.state_dict`` asks through those, never ``hasattr``.
(``tests/test_resume.py`` checks that a killed "ema" run resumes exactly, end to end.)"""
import ast
import copy
import inspect
import textwrap

import pytest
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_det.engine.trainer import Trainer, load_model_training_state, model_training_state
from tests.common import get_tiny_cfg, random_batch


def _model(normalizer="ema", arch="FocalRetinaNet"):
    cfg = get_tiny_cfg()
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.FOCAL_DET.LOSS_NORMALIZER = normalizer
    return build_model(cfg)


def _step(model, seed=5):
    model.train()
    with EventStorage() as storage:
        model(copy.deepcopy(random_batch(seed=seed)))
        return storage.latest()["num_pos_anchors"][0] * 2


@pytest.mark.parametrize("arch", ["FocalRetinaNet", "RetinaNet"])
def test_the_ema_normalizer_is_kept_once_it_has_started_and_restored(arch):
    model = _model(arch=arch)
    assert model_training_state(model) == {}  # before the first update there is none
    num_fg = _step(model)
    state = model_training_state(model)
    assert state == pytest.approx({"ema_loss_normalizer": 0.9 * 100 + 0.1 * num_fg})
    if arch == "FocalRetinaNet":
        assert model.training_state() == state  # the model's own answer
    fresh = _model(arch=arch)
    load_model_training_state(fresh, {"torch_rng": None, **state})  # other keys are ignored
    assert model_training_state(fresh) == state
    assert fresh.loss_normalizer == model.loss_normalizer


def test_a_model_without_an_ema_normalizer_keeps_nothing():
    model = _model("num_fg")
    _step(model)
    assert model.training_state() == {} and model_training_state(model) == {}


def test_trainer_state_dict_asks_no_hasattr():
    source = textwrap.dedent(inspect.getsource(Trainer.state_dict)
                             + inspect.getsource(Trainer.load_state_dict))
    probes = [ast.unparse(n) for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
              and isinstance(n.func, ast.Name) and n.func.id in ("hasattr", "getattr")]
    assert probes == []
