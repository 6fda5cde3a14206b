#!/usr/bin/env python
"""Train and evaluate focal_det models with Detectron2's own trainer, evaluator and launcher.

    python train_net.py --config-file configs/retinanet_R50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file ... --resume          # continue from last_checkpoint
    python train_net.py --config-file configs/lazy/retinanet_R18_shapes.py train.max_iter=100

The engine (trainer, hooks, resume state, setup, preflight) is ``focal_det.engine``; to change
how training works, subclass ``focal_det.engine.Trainer`` as you would Detectron2's
``DefaultTrainer``.
"""
import focal_det  # noqa: F401  (registers focal_det's components; first, see its docstring)
from focal_det.engine import run_command

if __name__ == "__main__":
    run_command(prog="train_net.py")
