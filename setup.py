#!/usr/bin/env python
"""focal_det: the Focal Loss paper (Lin et al., ICCV 2017) as a Detectron2 plugin.

Detectron2 is deliberately *not* in install_requires: it is published under several names
(a source build is `detectron2`, our pinned sdist is `pb1-detectron2`), and pip would otherwise
install a second copy over a user's own build. `import focal_det` checks for it and says how to
get it. `make venv` (README) installs the whole pinned stack instead.

The fused CPU loss ``focal_det._C`` is a C++ extension compiled here (it needs torch at build
time: ``pip install --no-build-isolation``). It is optional: without torch at build time, with
``FOCAL_DET_NO_EXT=1``, or if the compiler fails, focal_det installs without it and computes
the loss with plain PyTorch ops (same numbers, slower on CPU; ``python -m
focal_det.collect_env`` says which backend is in use).
"""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def extensions():
    """(ext_modules, cmdclass) for focal_det._C, or nothing where it cannot be built."""
    if os.environ.get("FOCAL_DET_NO_EXT") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("focal_det: torch is not importable at build time; building without focal_det._C "
              "(use pip install --no-build-isolation for the fused CPU loss)")
        return [], {}
    ext = CppExtension(
        "focal_det._C",
        [os.path.join("focal_det", "kernels", "csrc", name)
         for name in ("sigmoid_loss_cpu.cpp", "per_class_loss_cpu.cpp")],
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
        depends=[os.path.join("focal_det", "kernels", "csrc", "sigmoid_loss.h")],
        optional=True,  # a failed build leaves the plain-PyTorch loss, not a failed install
    )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


def get_version() -> str:
    init = os.path.join(HERE, "focal_det", "__init__.py")
    with open(init) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


EXT_MODULES, CMDCLASS = extensions()

setup(
    name="focal_det",
    version=get_version(),
    description="Focal Loss for Dense Object Detection (RetinaNet) as a Detectron2 plugin",
    packages=find_packages(include=("focal_det", "focal_det.*")),
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    python_requires=">=3.8",
    install_requires=[
        "torch>=1.10",
        "torchvision>=0.11",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.2",
        "matplotlib",
        "numpy",
        # opencv is needed (Detectron2's data pipeline and demo) but not listed, as Detectron2
        # does not list it either: opencv-python and opencv-python-headless both provide `cv2`
        # and installing one over the other breaks it. Install the flavour you want.
    ],
    extras_require={
        "dev": ["pytest>=7", "opencv-python-headless"],
    },
)
