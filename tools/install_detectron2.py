#!/usr/bin/env python
"""Install Detectron2 v0.6 (Python sources only) into the current environment.

Detectron2 is not on PyPI under its own name. ``pb1-detectron2==0.6`` is an sdist whose Python
sources are byte-identical to the upstream v0.6 tag, but it lacks ``detectron2/layers/csrc``, so a
plain ``pip install`` fails trying to compile the C++/CUDA extension ``detectron2._C``.

RetinaNet needs none of those ops (they serve rotated boxes, deformable convolution and the
optional fast COCO-eval accumulation). This script therefore

1. downloads the sdist from PyPI's simple index and checks its sha256,
2. removes the extension from its ``setup.py``,
3. adds ``detectron2/_C.py``: a stand-in module that lets ``import detectron2.modeling`` work and
   turns any call of a missing op into :class:`MissingDetectron2Extension` with the op's name and
   how to get a real build,
4. makes ``detectron2.export``'s Caffe2 exporter optional, as upstream Detectron2 did after v0.6
   (PyTorch no longer ships ``caffe2``, so v0.6's ``import detectron2.export`` fails, which
   takes ``TracingAdapter`` with it),
5. adapts the sources to today's libraries the way upstream did after v0.6: the NumPy aliases
   removed in 1.24 (``np.bool``, ``np.int``, ``np.float``, ``np.str`` -> builtins),
   ``np.array(..., copy=False)`` (an error in NumPy 2 where a copy is needed -> ``np.asarray``),
   Pillow 10's removal of ``Image.LINEAR`` (-> ``Image.BILINEAR``), and ``pkg_resources``
   (gone from setuptools 81) in ``detectron2.model_zoo`` (-> ``importlib.resources``); so
   NumPy 2, Pillow 13, OpenCV 5 and current setuptools work, on Python 3.11 to 3.13,
6. ``pip install --no-build-isolation`` the result, keeping the pins of ``requirements.txt``.

With ``--source PATH`` (a Detectron2 source tree or ``.tar.gz``, e.g. upstream main) it instead
builds that Detectron2, C++ extension included (needs a C++ compiler; minutes), the same way.

It does nothing when ``detectron2`` is already importable (e.g. a user's own source build),
unless ``--force`` is given or it is an install of this script at an older patch level.
Usage: ``python tools/install_detectron2.py [--force] [--source PATH]``.
"""
import argparse
import glob
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

SDIST = "pb1-detectron2==0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Bumped whenever the patches below change: an older install of ours is then replaced.
PATCH_LEVEL = 2

STUB = '''"""Stand-in for Detectron2's C++/CUDA extension, written by focal_det's
tools/install_detectron2.py. This Detectron2 v0.6 was installed from the pb1-detectron2 sdist,
which ships no C++ sources. RetinaNet (and focal_det) need none of the compiled ops; the ops that
do (rotated boxes, deformable convolution, fast COCO-eval) raise MissingDetectron2Extension.
"""

FOCAL_DET_STUB = True
FOCAL_DET_PATCH_LEVEL = %d


class MissingDetectron2Extension(RuntimeError):
    pass


def get_compiler_version():
    return "not built (focal_det stand-in for detectron2._C)"


def get_cuda_version():
    return "not built (focal_det stand-in for detectron2._C)"


def has_cuda():
    return False


def _missing(name):
    return MissingDetectron2Extension(
        f"detectron2._C.{name} is not available: this Detectron2 was installed by focal_det "
        "without its C++/CUDA extension (the pb1-detectron2 sdist has no C++ sources). "
        f"'{name}' is used by rotated boxes, deformable convolution or the fast COCO "
        "evaluator (use COCOEvaluator(..., use_fast_impl=False)); RetinaNet does not need it. "
        "To get it, build Detectron2 from source: "
        "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'."
    )


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise _missing(name)


def _register_torch_ops():
    # The real extension also registers torch.ops.detectron2.nms_rotated (used by
    # detectron2.layers.nms_rotated); give it a body that raises the same clear error.
    import torch

    global _LIB
    try:
        _LIB = torch.library.Library("detectron2", "DEF")
        _LIB.define("nms_rotated(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined (module re-imported, or a real build is loaded)
        return

    def nms_rotated(dets, scores, iou_threshold):
        raise _missing("nms_rotated")

    _LIB.impl("nms_rotated", nms_rotated, "CompositeExplicitAutograd")


_register_torch_ops()
'''


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_sdist(dest: str) -> None:
    """Fetch the sdist through PyPI's simple index. (Not `pip download`: preparing its metadata
    fails on current pip, which rejects the direct-URL dependency in its "all" extra.)"""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page = urllib.request.urlopen(f"{index}/pb1-detectron2/", timeout=60).read().decode()
    links = re.findall(r'href="([^"]*' + re.escape(SDIST_FILE) + r'[^"]*)"', page)
    if not links:
        raise SystemExit(f"{index}/pb1-detectron2/: no link to {SDIST_FILE}")
    url = urllib.parse.urljoin(f"{index}/pb1-detectron2/", links[0].split("#")[0])
    print(f"Downloading {url}")
    tmp = dest + ".part"
    with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f)
    os.replace(tmp, dest)


def patch_setup_py(path: str) -> None:
    with open(path) as f:
        src = f.read()
    new, n = re.subn(r"ext_modules\s*=\s*get_extensions\(\)", "ext_modules=[]", src)
    if n != 1:
        raise RuntimeError(f"{path}: could not find 'ext_modules=get_extensions()' to remove")
    # cmdclass build_ext uses torch's BuildExtension; harmless without extensions, but drop it.
    new = re.sub(r"cmdclass\s*=\s*\{[^}]*\},?", "", new)
    # A direct-URL dependency (extra "all") that current pip refuses; focal_det does not use it.
    new = re.sub(r'\s*"panopticapi @ [^"]*",', "", new)
    with open(path, "w") as f:
        f.write(new)


EXPORT_INIT = '''# -*- coding: utf-8 -*-
# Patched by focal_det's tools/install_detectron2.py as in upstream Detectron2 after v0.6:
# the Caffe2 exporter is optional (PyTorch >= 2 no longer ships caffe2).
from .flatten import TracingAdapter
from .torchscript import scripting_with_instances, dump_torchscript_IR

try:
    from caffe2.proto import caffe2_pb2 as _tmp  # noqa: F401
except ImportError:
    pass
else:
    from .api import *

__all__ = [k for k in globals().keys() if not k.startswith("_")]
'''


def patch_export_init(path: str) -> None:
    with open(path) as f:
        if "from .api import *" not in f.read():
            raise RuntimeError(f"{path}: unexpected content, not patching")
    with open(path, "w") as f:
        f.write(EXPORT_INIT)


MODEL_ZOO_OLD = """    cfg_file = pkg_resources.resource_filename(
        "detectron2.model_zoo", os.path.join("configs", config_path)
    )"""
MODEL_ZOO_NEW = """    cfg_file = str(importlib.resources.files("detectron2.model_zoo").joinpath(
        "configs", config_path))"""


def patch_for_current_libraries(root: str) -> int:
    """Adapt v0.6's sources to NumPy 2, Pillow >= 10 and setuptools >= 81 (see docstring, 5).
    Returns the number of changes; raises if an expected pattern is missing."""
    changes = 0
    for path in glob.glob(os.path.join(root, "detectron2", "**", "*.py"), recursive=True):
        with open(path) as f:
            src = f.read()
        new, n = re.subn(r"\bnp\.(bool|int|float|str)\b(?![_\d])", r"\1", src)
        new = new.replace("interp=Image.LINEAR", "interp=Image.BILINEAR")
        new = new.replace("np.array(mask, copy=False)", "np.asarray(mask)")
        if path.endswith(os.path.join("model_zoo", "model_zoo.py")):
            if MODEL_ZOO_OLD not in new:
                raise RuntimeError(f"{path}: pkg_resources call not found, not patching")
            new = new.replace("import pkg_resources\n", "import importlib.resources\n")
            new = new.replace(MODEL_ZOO_OLD, MODEL_ZOO_NEW)
        if new != src:
            changes += 1
            with open(path, "w") as f:
                f.write(new)
    if changes < 10:
        raise RuntimeError(f"{root}: only {changes} files adapted; not the v0.6 sources?")
    return changes


def installed_patch_level():
    """None: no Detectron2; -1: someone else's; else the patch level of our install."""
    if importlib.util.find_spec("detectron2") is None:
        return None
    spec = importlib.util.find_spec("detectron2._C")
    if spec is None or not spec.origin or not spec.origin.endswith("_C.py"):
        return -1  # a compiled build: not ours
    with open(spec.origin) as f:
        m = re.search(r"^FOCAL_DET_PATCH_LEVEL = (\d+)", f.read(), re.M)
    return int(m.group(1)) if m else 1


def pip_install(src: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", src]
    constraints = os.path.join(REPO_ROOT, "requirements.txt")
    if os.path.exists(constraints):
        cmd += ["-c", constraints]
    subprocess.check_call(cmd)


def install_from_source(path: str, cache: str) -> None:
    """Build a Detectron2 source tree or .tar.gz (e.g. upstream main) with its extension."""
    if os.path.isdir(path):
        return pip_install(path)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        with tarfile.open(path) as tar:
            tar.extractall(tmp, filter="data")
        tops = os.listdir(tmp)
        if len(tops) != 1 or not os.path.exists(os.path.join(tmp, tops[0], "setup.py")):
            raise SystemExit(f"{path}: expected one top folder with a setup.py, got {tops}")
        pip_install(os.path.join(tmp, tops[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="install even if importable")
    parser.add_argument("--cache", default=os.path.join(REPO_ROOT, ".cache"))
    parser.add_argument("--source", default=os.environ.get("DETECTRON2_SOURCE") or None,
                        help="build this Detectron2 source tree or .tar.gz instead of v0.6 "
                             "(default: $DETECTRON2_SOURCE)")
    args = parser.parse_args()

    level = installed_patch_level()
    if not args.force and level is not None and (level == -1 or level >= PATCH_LEVEL):
        print("detectron2 is already importable; nothing to do (use --force to reinstall)")
        return 0
    os.makedirs(args.cache, exist_ok=True)
    if args.source:
        if not os.path.exists(args.source):
            raise SystemExit(f"--source {args.source}: no such file or folder")
        install_from_source(args.source, args.cache)
        return 0

    archive = os.path.join(args.cache, SDIST_FILE)
    if not os.path.exists(archive) or sha256(archive) != SDIST_SHA256:
        download_sdist(archive)
    digest = sha256(archive)
    if digest != SDIST_SHA256:
        raise SystemExit(f"{archive}: sha256 {digest} != expected {SDIST_SHA256}; refusing")

    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        src = os.path.join(tmp, "pb1-detectron2-0.6")
        patch_setup_py(os.path.join(src, "setup.py"))
        patch_export_init(os.path.join(src, "detectron2", "export", "__init__.py"))
        print(f"Adapted {patch_for_current_libraries(src)} files to NumPy 2 / Pillow / setuptools")
        with open(os.path.join(src, "detectron2", "_C.py"), "w") as f:
            f.write(STUB % PATCH_LEVEL)
        shutil.rmtree(os.path.join(src, "pb1_detectron2.egg-info"), ignore_errors=True)
        pip_install(src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
