"""Per-tensor gradient norms over the first iterations of training, and whether gradient
clipping fires: ``MODEL.FOCAL_DET.GRAD_STATS_ITERS: N`` writes one JSON line per iteration
``< N`` to ``OUTPUT_DIR/grad_stats.jsonl`` (rank 0), measured before any clipping:

    {"iteration": 3, "clip": {"enabled": true, "type": "norm", "value": 10.0},
     "fired": 4, "total_norm": 271.3, "norms": {"head.cls_score.weight": 256.1, ...}}

``fired`` is what Detectron2's clipping does (or, when disabled, would do) at that iteration:
with ``CLIP_TYPE: norm`` the number of parameter tensors whose own norm exceeds ``CLIP_VALUE``
(each is clipped separately), with ``full_model`` 1 if the norm of all gradients together
does. It costs one fused norm and one host sync per logged iteration, nothing afterwards.
``focal_det.analysis.grad_stats`` summarizes the files.
"""
import json
import os
import types

import torch
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

FILENAME = "grad_stats.jsonl"


def install(optimizer: torch.optim.Optimizer, model: torch.nn.Module, cfg) -> None:
    """Wrap ``optimizer.step`` (before Detectron2's LR scheduler wraps it) to record norms."""
    iters = cfg.MODEL.FOCAL_DET.GRAD_STATS_ITERS
    if iters <= 0 or not comm.is_main_process():
        return
    model = getattr(model, "module", model)
    names = {id(p): n for n, p in model.named_parameters()}
    clip = cfg.SOLVER.CLIP_GRADIENTS
    clip_info = {"enabled": bool(clip.ENABLED), "type": clip.CLIP_TYPE,
                 "value": float(clip.CLIP_VALUE)}
    path = os.path.join(cfg.OUTPUT_DIR, FILENAME)
    step = optimizer.step

    def recorded_step(self, *args, **kwargs):
        try:
            it = get_event_storage().iter
        except AssertionError:  # stepped outside a trainer: nothing to attribute it to
            it = iters
        if it < iters:
            params = [p for g in self.param_groups for p in g["params"]
                      if p.grad is not None]
            norms = torch.stack(torch._foreach_norm([p.grad.detach() for p in params]))
            values = norms.float().cpu().tolist()
            total = float(torch.linalg.vector_norm(torch.tensor(values)))
            if clip_info["type"] == "full_model":
                fired = int(total > clip_info["value"])
            else:
                fired = sum(v > clip_info["value"] for v in values)
            row = {"iteration": int(it), "clip": clip_info, "fired": int(fired),
                   "total_norm": total,
                   "norms": {names.get(id(p), f"param{i}"): v
                             for i, (p, v) in enumerate(zip(params, values))}}
            with open(path, "a") as f:  # a resumed run appends; readers keep the last row
                f.write(json.dumps(row) + "\n")
        return step(*args, **kwargs)

    # A bound method: torch's LR scheduler wraps ``optimizer.step`` through ``__func__``.
    optimizer.step = types.MethodType(recorded_step, optimizer)
