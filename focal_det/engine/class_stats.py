"""The classification loss's per-class state over training, for losses that have one (Equalized
Focal Loss's gradient statistics, focal_det.losses.efl): every ``period`` iterations (the log
period, 20 by default) and at the last, one line of ``OUTPUT_DIR/class_stats.jsonl``::

    {"iteration": i, "<buffer>": [K values], ...}

with each of the loss's per-class buffers (1-D tensors, e.g. EFL's ``pos_grad``, ``neg_grad``
and ``pos_neg`` = g_j), as they are after iteration i's optimizer step. It is what a chart of
g_j over training reads (docs/REPRODUCTION.md, Section 8). Losses without state (FL and the
paper's family) are not modules with buffers: nothing is written for them. Only the main
process writes; a resumed run appends, and :func:`read_class_stats` keeps the last line of an
iteration and passes over a line a kill cut short.
"""
import json
import os
from typing import Dict, List

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..losses.base import ClassificationLoss

FILE = "class_stats.jsonl"


def stateful_losses(model: torch.nn.Module) -> List[ClassificationLoss]:
    """The classification losses inside ``model`` that hold per-class buffers."""
    return [m for m in model.modules() if isinstance(m, ClassificationLoss)
            and any(b.dim() == 1 for b in m.buffers())]


class ClassStatsWriter(HookBase):
    def __init__(self, losses: List[ClassificationLoss], output_dir: str, period: int = 20):
        self.losses, self.period = losses, int(period)
        self.path = os.path.join(output_dir, FILE)

    def after_step(self):
        it = self.trainer.iter
        if ((it + 1) % self.period and it + 1 != self.trainer.max_iter) \
                or not comm.is_main_process():
            return
        row: Dict = {"iteration": int(it)}
        for i, loss in enumerate(self.losses):
            prefix = "" if len(self.losses) == 1 else f"{i}."
            for name, buf in loss.named_buffers():
                if buf.dim() == 1:
                    row[prefix + name] = buf.detach().float().cpu().tolist()
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read_class_stats(run_dir: str) -> List[Dict]:
    """The rows of ``run_dir/class_stats.jsonl`` by iteration, the last row of each; [] if
    there is none."""
    path = os.path.join(run_dir, FILE)
    rows: Dict[int, Dict] = {}
    if not os.path.exists(path):
        return []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run
                continue
            rows[int(row["iteration"])] = row
    return [rows[i] for i in sorted(rows)]
