"""Checkpoints that cannot be half-written and cannot run code when loaded.

``FocalCheckpointer`` is Detectron2's ``DetectionCheckpointer`` with two seams changed:

- writing: each checkpoint and ``last_checkpoint`` go to a temporary file in the same folder,
  are flushed and fsync'ed, then renamed over the target (atomic on POSIX), so a process killed
  at any instant leaves the previous checkpoint loadable and ``last_checkpoint`` pointing to a
  complete file;
- reading: ``.pth`` files load with ``torch.load(..., weights_only=True)``; Detectron2 ``.pkl``
  files (pickled dicts of numpy arrays) load through an unpickler that only allows what such
  files contain. A pickle that would import anything else is refused with
  :class:`UnsafeCheckpointError` naming the file and the refused global;
- paths: a query after the file name, as Detectron2 main accepts (``model.pth?matching_heuristics=True``
  loads by name-matching heuristics), works on every Detectron2 version, and an unknown query
  is an error before anything is read.
"""
import os
import pickle
import re
import zipfile
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from .errors import FocalDetError
from .utils.files import atomic_write  # noqa: F401  (also this module's API)


class UnsafeCheckpointError(FocalDetError, pickle.UnpicklingError):
    """The file would run code (or load objects other than arrays/tensors) when unpickled."""


class NotACheckpointError(FocalDetError, ValueError):
    """The file is not a checkpoint at all (e.g. a text file named .pth)."""


class ClassCountMismatchError(FocalDetError, ValueError):
    """Weights trained for another number of classes, where they would be used as they are."""


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


class FocalCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves and code-free loading (see module docstring).

    ``require_same_classes=True`` (evaluation, prediction) refuses weights whose class conv
    was trained for another number of classes, naming both, instead of Detectron2's shape
    warning and a randomly initialized classifier; training keeps the warning (fine-tuning)."""

    _focal_queries: Optional[Dict[str, str]] = None
    _focal_path: str = ""

    def __init__(self, model, save_dir="", *, require_same_classes: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.require_same_classes = require_same_classes

    def _load_model(self, checkpoint):
        self._check_head_kind(checkpoint)
        if self.require_same_classes:
            self._check_class_head(checkpoint["model"])
        return super()._load_model(checkpoint)

    def _check_head_kind(self, checkpoint) -> None:
        """A sigmoid class head (K logits per anchor) never loads into a softmax model (K + 1,
        background last), nor the reverse, in training either: the shapes can even agree (K + 1
        sigmoid classes), the meaning never does. Our checkpoints say which they are
        (``focal_det_head``); others are sigmoid RetinaNets (Detectron2's)."""
        model = getattr(self.model, "module", self.model)
        own_logits, k = getattr(model, "num_logits", None), getattr(model, "num_classes", None)
        key = "head.cls_score.weight"
        theirs = checkpoint.get("model", {}).get(key)
        if own_logits is None or theirs is None:
            return
        own = model.state_dict()[key]
        meta = checkpoint.get("focal_det_head")
        own_softmax = own_logits != k
        if meta is not None:
            their_softmax = meta["num_logits"] != meta["num_classes"]
        else:
            their_softmax = False  # Detectron2's RetinaNet and our older checkpoints: sigmoid
            if not own_softmax or tuple(theirs.shape) != (own.shape[0] // own_logits * k,
                                                          *own.shape[1:]):
                return  # another class count: the class-count checks and warnings apply
        if own_softmax != their_softmax:
            kind = {True: "softmax (K + 1 logits per anchor, background last)",
                    False: "sigmoid (K logits per anchor)"}
            raise ClassCountMismatchError(
                f"{self._focal_path}: its class head {tuple(theirs.shape)} is {kind[their_softmax]}"
                f", but this model's {tuple(own.shape)} is {kind[own_softmax]} "
                f"(MODEL.FOCAL_DET.CLS_LOSS.NAME {type(model.cls_loss).__name__}); one cannot "
                "be loaded into the other. Use the loss the weights were trained with.")

    def _check_class_head(self, weights) -> None:
        model = getattr(self.model, "module", self.model)
        key = "head.cls_score.weight"
        own, theirs = model.state_dict().get(key), weights.get(key)
        num_classes = getattr(model, "num_classes", None)
        if own is None or theirs is None or not num_classes or theirs.shape == own.shape:
            return  # other layouts (e.g. Caffe2 names) go through matching heuristics
        anchors = own.shape[0] // num_classes
        theirs_classes = theirs.shape[0] / anchors
        named = (f"{int(theirs_classes)} classes" if theirs_classes.is_integer()
                 else f"{theirs.shape[0]} outputs, not a multiple of {anchors} anchors")
        raise ClassCountMismatchError(
            f"{self._focal_path}: its class conv was trained for {named}, but "
            f"MODEL.RETINANET.NUM_CLASSES is {num_classes}. Evaluating it would use a randomly "
            "initialized classifier. Set MODEL.RETINANET.NUM_CLASSES to match the weights "
            "(fine-tuning from them in training is allowed).")

    def load(self, path, *args, **kwargs):
        # Detectron2 main parses the query in its own load() and applies it in _load_file,
        # which we replace; v0.6 knows no queries. So the query is handled here, the same way
        # on both, and the parent sees a plain path.
        queries = {}
        if path:
            path, queries = split_query(path)
        self._focal_queries, self._focal_path = queries, path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._focal_queries = None

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        model = getattr(self.model, "module", self.model)
        if hasattr(model, "num_logits"):  # which class head these weights belong to
            data["focal_det_head"] = {"num_classes": int(model.num_classes),
                                      "num_logits": int(model.num_logits)}
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def _load_file(self, filename: str):
        local = self.path_manager.get_local_path(filename)
        if filename.endswith(".pkl"):
            data = load_pkl_safely(local)
            if "model" in data and "__author__" in data:
                return data
            if "blobs" in data:  # Detectron (v1) / Caffe2 detection models
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        with open(local, "rb") as f:
            head = f.read(2)
        if not zipfile.is_zipfile(local) and head[:1] != b"\x80":
            raise NotACheckpointError(
                f"{filename}: not a checkpoint (neither torch.save's zip format nor a pickle; "
                f"it starts with {head!r})")
        try:
            loaded = torch.load(local, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"{filename}: refusing to load, {_refused_global(str(e))}, which a weights "
                "file never contains; it may run code. focal_det loads only tensors and plain "
                "containers from .pth files."
            ) from None
        except Exception as e:  # a truncated or corrupted file
            raise NotACheckpointError(
                f"{filename}: not a readable checkpoint ({type(e).__name__}: {e})") from None
        if "model" not in loaded:
            loaded = {"model": loaded}
        if (self._focal_queries or {}).get("matching_heuristics") == "True":
            loaded["matching_heuristics"] = True
        return loaded


def numpy_state(model: torch.nn.Module) -> dict:
    """A model's state as numpy arrays: the Detectron2 .pkl checkpoint layout."""
    return {k: np.asarray(v.detach().cpu().numpy()) for k, v in model.state_dict().items()}
