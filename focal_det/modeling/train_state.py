"""What exact resume needs of a RetinaNet beyond its ``state_dict()``: the EMA loss normalizer
(``LOSS_NORMALIZER: ema``), which Detectron2's ``_ema_update`` keeps as the plain attribute
``loss_normalizer``, made at the first update (absent before it).

``FocalRetinaNet.training_state()`` / ``load_training_state(state)`` are the model's contract
with ``focal_det.engine.Trainer``, which checkpoints the state beside the optimizer and RNG;
Detectron2's own ``RetinaNet`` (trained as the grids' reference) has no such methods and keeps
the same attribute, so the trainer reads it with these functions."""
from detectron2.modeling.meta_arch.retinanet import RetinaNet

__all__ = ["ema_normalizer_state", "load_ema_normalizer_state"]


def ema_normalizer_state(model: RetinaNet) -> dict:
    """``{"ema_loss_normalizer": value}`` once the EMA has started, else {}."""
    value = vars(model).get("loss_normalizer")
    return {} if value is None else {"ema_loss_normalizer": float(value)}


def load_ema_normalizer_state(model: RetinaNet, state: dict) -> None:
    """Restore :func:`ema_normalizer_state`'s value (other keys are ignored)."""
    if "ema_loss_normalizer" in state:
        model.loss_normalizer = float(state["ema_loss_normalizer"])
