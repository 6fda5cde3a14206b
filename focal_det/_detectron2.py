"""Checks that Detectron2 is importable, and tells how to get it when it is not."""
import importlib.util


def require_detectron2() -> None:
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(
            "focal_det needs Detectron2 (v0.6 or newer), which is not installed in this "
            "environment. Either run `make venv` in the focal_det checkout (installs the pinned "
            "stack into .venv), or `python tools/install_detectron2.py` into this environment, "
            "or build Detectron2 from source yourself."
        )


def has_real_extension() -> bool:
    """True if ``detectron2._C`` is a compiled extension, False for focal_det's stand-in."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "FOCAL_DET_STUB", False)
