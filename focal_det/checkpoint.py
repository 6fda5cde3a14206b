"""Checkpoints that cannot be half-written and cannot run code when loaded.

``FocalCheckpointer`` is Detectron2's ``DetectionCheckpointer`` with these seams changed, and
nothing else (saving, ``last_checkpoint``, resuming, name matching are fvcore's and
Detectron2's own):

- writing: the checkpointer's ``path_manager`` opens local files for writing with
  :func:`focal_det.utils.files.atomic_open` (written aside, fsync'ed, renamed over the target),
  so fvcore's own ``save`` and ``tag_last_checkpoint`` can be killed at any instant and leave
  the previous checkpoint loadable and ``last_checkpoint`` naming a complete file;
- reading (``_load_file``): the formats Detectron2 reads, each without running code. ``.pth``
  (and any other torch file) loads with ``torch.load(..., weights_only=True)``; Detectron2 and
  Caffe2/Detectron ``.pkl`` files (pickled dicts of numpy arrays) through an unpickler that
  only allows what such files contain; pycls ``.pyth`` files (``{"model_state": ...}``) with
  ``weights_only=True`` as well. A file that would import anything else is refused with
  :class:`UnsafeCheckpointError` naming the file and the refused global;
- paths (``load``): a query after the file name, as Detectron2 main accepts
  (``model.pth?matching_heuristics=True`` loads by name-matching heuristics), works on every
  Detectron2 version, and an unknown query is an error before anything is read;
- the model's word: a model with a ``checkpoint_hook()`` method returns an object with
  ``checkpoint_metadata() -> dict`` (saved with the weights) and
  ``check_checkpoint(checkpoint, *, source, same_classes)`` (raises to refuse weights it cannot
  use; ``same_classes`` is the checkpointer's ``require_same_classes``). The checkpointer knows
  nothing else of the model (focal_det's RetinaNet: :mod:`focal_det.modeling.class_head`).
"""
import contextvars
import os
import pickle
import re
import zipfile
from typing import Dict, List, NamedTuple
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from .errors import ClassCountMismatchError, FocalDetError  # noqa: F401  (also this API)
from .utils.files import atomic_open, atomic_write  # noqa: F401  (also this module's API)


class UnsafeCheckpointError(FocalDetError, pickle.UnpicklingError):
    """The file would run code (or load objects other than arrays/tensors) when unpickled."""


class NotACheckpointError(FocalDetError, ValueError):
    """The file is not a checkpoint at all (e.g. a text file named .pth)."""


def _refused_global(message: str) -> str:
    # torch's weights_only error names the global ("Unsupported global: GLOBAL io.open ...");
    # keep that, drop its advice to load with weights_only=False.
    m = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    return f"it asks for '{m.group(1)}'" if m else "it holds objects other than tensors"


# What Detectron2 / Caffe2 .pkl checkpoints legitimately need to rebuild numpy arrays.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, filename: str):
        super().__init__(file, encoding="latin1")
        self.filename = filename

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.filename}: refusing to load, the pickle asks for '{module}.{name}', which a "
            "Detectron2 checkpoint (a dict of numpy arrays) never contains. It may run code; "
            "if you trust the file, convert it yourself outside focal_det."
        )


def load_pkl_safely(path: str) -> dict:
    with open(path, "rb") as f:
        try:
            data = _RestrictedUnpickler(f, path).load()
        except UnsafeCheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise NotACheckpointError(
                f"{path}: not a Detectron2 .pkl checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise UnsafeCheckpointError(f"{path}: expected a dict, got {type(data).__name__}")
    return data


def load_torch_safely(path: str, name: str = "") -> dict:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that is no checkpoint, or that
    holds more than tensors and plain containers, is refused naming ``name`` (default path)."""
    name = name or path
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise NotACheckpointError(
            f"{name}: not a checkpoint (neither torch.save's zip format nor a pickle; "
            f"it starts with {head!r})")
    try:
        loaded = torch.load(path, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{name}: refusing to load, {_refused_global(str(e))}, which a weights file never "
            "contains; it may run code. focal_det loads only tensors and plain containers "
            "from .pth files."
        ) from None
    except Exception as e:  # a truncated or corrupted file
        raise NotACheckpointError(
            f"{name}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(loaded, dict):
        raise NotACheckpointError(f"{name}: expected a dict of weights, got "
                                  f"{type(loaded).__name__}")
    return loaded


QUERIES = {"matching_heuristics": ("True", "False")}


def split_query(path: str):
    """``(path without query, {name: value})``; ValueError for a query Detectron2 does not
    know or a value it does not accept."""
    parsed = urlparse(path)
    if not parsed.query:
        return path, {}
    queries: Dict[str, List[str]] = parse_qs(parsed.query, keep_blank_values=True)
    for name, values in queries.items():
        if name not in QUERIES:
            raise ValueError(f"MODEL.WEIGHTS={path!r}: unsupported query '{name}' "
                             f"(supported: {sorted(QUERIES)})")
        if len(values) != 1 or values[0] not in QUERIES[name]:
            raise ValueError(f"MODEL.WEIGHTS={path!r}: query '{name}' must be one of "
                             f"{list(QUERIES[name])}, got {values}")
    return parsed._replace(query="").geturl(), {k: v[0] for k, v in queries.items()}


class _Load(NamedTuple):
    path: str = ""
    matching_heuristics: bool = False


# What one load() call asked for, seen by the _load_file and _load_model it makes (set and
# reset around that call: nothing of one load is left on the checkpointer for the next).
_CURRENT_LOAD: contextvars.ContextVar = contextvars.ContextVar("focal_det_load", default=_Load())


class _AtomicWrites:
    """A path manager whose ``open`` for writing a local file is :func:`atomic_open`;
    everything else goes to the path manager it wraps."""

    def __init__(self, inner):
        self._inner = inner

    def open(self, path: str, mode: str = "r", **kwargs):
        if mode in ("w", "wb") and "://" not in path:
            return atomic_open(path, mode)
        return self._inner.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class FocalCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves and code-free loading (see module docstring).

    ``require_same_classes=True`` (evaluation, prediction) asks the model's checkpoint hook to
    refuse weights trained for another number of classes (naming both) instead of Detectron2's
    shape warning and a randomly initialized classifier; training keeps the warning
    (fine-tuning)."""

    def __init__(self, model, save_dir="", *, require_same_classes: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.require_same_classes = require_same_classes
        self.path_manager = _AtomicWrites(self.path_manager)

    def _model_hook(self):
        make = getattr(self.model, "checkpoint_hook", None)
        return make() if callable(make) else None

    def save(self, name: str, **kwargs) -> None:
        hook = self._model_hook()
        extra = hook.checkpoint_metadata() if hook is not None else {}
        super().save(name, **{**extra, **kwargs})

    def load(self, path, *args, **kwargs):
        # Detectron2 main parses the query in its own load() and applies it in _load_file,
        # which we replace; v0.6 knows no queries. So the query is handled here, the same way
        # on both, and the parent sees a plain path.
        queries = {}
        if path:
            path, queries = split_query(path)
        token = _CURRENT_LOAD.set(_Load(path or "", queries.get("matching_heuristics") == "True"))
        try:
            return super().load(path, *args, **kwargs)
        finally:
            _CURRENT_LOAD.reset(token)

    def _load_model(self, checkpoint):
        hook = self._model_hook()
        if hook is not None:
            hook.check_checkpoint(checkpoint, source=_CURRENT_LOAD.get().path or "checkpoint",
                                  same_classes=self.require_same_classes)
        return super()._load_model(checkpoint)

    def _load_file(self, filename: str):
        """Detectron2's ``_load_file`` (its formats, its conversions), reading safely."""
        local = self.path_manager.get_local_path(filename)
        if filename.endswith(".pkl"):
            data = load_pkl_safely(local)
            if "model" in data and "__author__" in data:  # Detectron2 model zoo format
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            if "blobs" in data:  # Caffe2 / Detectron (v1) detection models
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        loaded = load_torch_safely(local, filename)
        if filename.endswith(".pyth"):  # pycls; no one else seems to use ".pyth"
            if not isinstance(loaded.get("model_state"), dict):
                raise NotACheckpointError(f"{filename}: a .pyth file is read as pycls "
                                          "checkpoint, which must hold 'model_state'")
            state = {k: v for k, v in loaded["model_state"].items()
                     if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if "model" not in loaded:
            loaded = {"model": loaded}
        if _CURRENT_LOAD.get().matching_heuristics:
            loaded["matching_heuristics"] = True
        return loaded


def numpy_state(model: torch.nn.Module) -> dict:
    """A model's state as numpy arrays: the Detectron2 .pkl checkpoint layout."""
    return {k: np.asarray(v.detach().cpu().numpy()) for k, v in model.state_dict().items()}
