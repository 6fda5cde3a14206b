import os

# Triton kernels (focal_det's CUDA loss) run on CPU tensors in Triton's interpreter, so the
# normal suite checks them without a GPU. Must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
