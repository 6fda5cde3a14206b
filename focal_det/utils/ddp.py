"""Multi-process training on CPU (gloo) through Detectron2's own DefaultTrainer.

Detectron2's ``create_ddp_model`` always passes ``device_ids=[local_rank]``, which
DistributedDataParallel refuses for CPU modules, so DefaultTrainer cannot train on several CPU
processes. ``cpu_ddp_support()`` wraps it, for the duration of a ``with`` block only, to pass
``device_ids=None`` when the model is on the CPU; GPU models are untouched.
"""
import contextlib

import detectron2.engine.defaults as d2_defaults
from detectron2.utils import comm


@contextlib.contextmanager
def cpu_ddp_support():
    original = d2_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        on_cpu = next(model.parameters()).device.type == "cpu"
        if comm.get_world_size() > 1 and on_cpu:
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original
