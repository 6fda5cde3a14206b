import os
import sys

# Triton kernels (focal_det's CUDA loss) run on CPU tensors in Triton's interpreter, so the
# normal suite checks them without a GPU. Must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
