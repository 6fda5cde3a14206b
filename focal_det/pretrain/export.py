"""Pretrained classifier -> detector weights, and the check that a detector loads all of them.

The file is ``{"model": {"backbone.bottom_up.<name>": tensor}, "focal_det_pretrain": {...}}``:
the detector's own parameter names (``build_retinanet_resnet_fpn_backbone`` keeps the ResNet as
``backbone.bottom_up``), BN's ``num_batches_tracked`` dropped, so that ``MODEL.WEIGHTS`` loads it
by exact name. With ``MODEL.RESNETS.NORM: FrozenBN`` each BN's weight, bias and running
statistics become ``FrozenBatchNorm2d``'s buffers; :func:`check_detector_loads` builds the
detector from the detection config and proves it: every ``backbone.bottom_up`` key of the
detector is in the file, every key of the file is used, each loaded tensor equals the file's,
and every norm layer of the bottom-up is frozen.
"""
import logging
from typing import Dict

import torch

from ..errors import FocalDetError
from ..utils.files import atomic_write

PREFIX = "backbone.bottom_up."


class BackboneExportError(FocalDetError, ValueError):
    pass


def detector_state(classifier) -> Dict[str, torch.Tensor]:
    return {PREFIX + k: v.detach().clone() for k, v in classifier.bottom_up.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def export(classifier, path: str, meta: dict) -> Dict[str, torch.Tensor]:
    state = detector_state(classifier)
    atomic_write(path, lambda f: torch.save({"model": state, "focal_det_pretrain": meta}, f))
    return state


def check_detector_loads(det_cfg, path: str) -> dict:
    """Build the detector of ``det_cfg`` with ``MODEL.WEIGHTS = path`` as training does and
    verify the backbone keys (see the module docstring). Returns counts for the report."""
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling import build_model

    from ..checkpoint import FocalCheckpointer

    cfg = det_cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = path
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = build_model(cfg)
    # The head and FPN are not in the file, by design; the checks below say what matters.
    quiet = [logging.getLogger(n) for n in ("fvcore", "detectron2")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        FocalCheckpointer(model).load(path)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    own = {k: v for k, v in model.state_dict().items() if k.startswith(PREFIX)}
    missing = sorted(set(own) - set(saved))
    unused = sorted(set(saved) - set(own))
    if missing or unused:
        raise BackboneExportError(
            f"{path} does not fit the detector of this config (MODEL.RESNETS.DEPTH "
            f"{cfg.MODEL.RESNETS.DEPTH}): missing {missing[:5]} ({len(missing)}), unused "
            f"{unused[:5]} ({len(unused)})")
    wrong = [k for k in own if own[k].shape != saved[k].shape or not torch.equal(own[k], saved[k])]
    if wrong:
        raise BackboneExportError(f"{path}: the detector's {wrong[:5]} differ from the file "
                                  f"after loading ({len(wrong)} tensors)")
    # Detectron2's convs keep their norm as ``<conv>.norm``.
    norms = {n: m for n, m in model.backbone.bottom_up.named_modules() if n.endswith("norm")}
    unfrozen = sorted(n for n, m in norms.items() if not isinstance(m, FrozenBatchNorm2d))
    if cfg.MODEL.RESNETS.NORM == "FrozenBN" and unfrozen:
        raise BackboneExportError(f"norm layers {unfrozen[:5]} of the bottom-up are not "
                                  "FrozenBatchNorm2d under MODEL.RESNETS.NORM FrozenBN")
    return {"backbone_keys": len(own), "frozen_norms": len(norms) - len(unfrozen),
            "norms": len(norms)}
