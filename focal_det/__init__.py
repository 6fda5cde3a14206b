"""focal_det: Focal Loss for Dense Object Detection as registered Detectron2 components.

``import focal_det`` is all a user does: the imports at the bottom of this file run the registry
decorators (Detectron2's ``META_ARCH_REGISTRY`` and focal_det's own loss / bias-init registries)
and register the built-in dataset.
"""
__version__ = "0.1.0"

import warnings as _warnings

from ._detectron2 import require_detectron2 as _require_detectron2

_require_detectron2()

with _warnings.catch_warnings():
    # fvcore (its focal losses) and Detectron2 (box_regression) call torch.jit.script when
    # imported, which torch 2.x deprecates: two FutureWarnings in every command. Third-party
    # code we cannot change, imported once here with that one warning silenced; no filter is
    # left installed.
    _warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                             category=FutureWarning)
    import fvcore.nn  # noqa: E402,F401
    import detectron2.modeling  # noqa: E402,F401

from .config import add_focal_det_config, get_cfg  # noqa: E402

# Registration happens here, in one visible place.
from . import losses  # noqa: E402,F401  registers CLS_LOSS_REGISTRY entries
from . import bias_init  # noqa: E402,F401  registers BIAS_INIT_REGISTRY entries
from . import modeling  # noqa: E402,F401  registers FocalRetinaNet in META_ARCH_REGISTRY
from . import data  # noqa: E402,F401  registers the built-in dataset
from .checkpoint import UnsafeCheckpointError  # noqa: E402
from .predictor import Predictor  # noqa: E402

__all__ = ["__version__", "add_focal_det_config", "get_cfg", "Predictor", "UnsafeCheckpointError"]
