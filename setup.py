#!/usr/bin/env python
"""focal_det: the Focal Loss paper (Lin et al., ICCV 2017) as a Detectron2 plugin.

Detectron2 is deliberately *not* in install_requires: it is published under several names
(a source build is `detectron2`, our pinned sdist is `pb1-detectron2`), and pip would otherwise
install a second copy over a user's own build. `import focal_det` checks for it and says how to
get it. `make venv` (README) installs the whole pinned stack instead.
"""
import os
import re

from setuptools import find_packages, setup


def get_version() -> str:
    init = os.path.join(os.path.dirname(os.path.abspath(__file__)), "focal_det", "__init__.py")
    with open(init) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setup(
    name="focal_det",
    version=get_version(),
    description="Focal Loss for Dense Object Detection (RetinaNet) as a Detectron2 plugin",
    packages=find_packages(include=("focal_det", "focal_det.*")),
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
