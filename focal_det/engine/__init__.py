"""The training and evaluation engine behind ``train_net.py``.

- ``trainer.py``: :class:`Trainer`, Detectron2's ``DefaultTrainer`` with focal_det's
  checkpointer, data stream, evaluator and exact-resume state;
- ``run.py``: the command (parser, preflight, setup, launch, train or evaluate);
- ``lazy.py``: what the trainer builds from a LazyConfig ``.py`` config (its
  :class:`focal_det.lazy_run.LazyRunConfig` view): one engine for both config kinds;
- ``amp.py``: mixed-precision training on any device (Detectron2's ``AMPTrainer``, one seam).
"""
from .run import get_parser, load_cfg, main, preflight, render, run_command, setup
from .trainer import Trainer

__all__ = ["Trainer", "get_parser", "load_cfg", "main", "preflight", "render", "run_command",
           "setup"]
