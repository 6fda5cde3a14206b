"""Backbone pretraining: train Detectron2's own ResNet bottom-up as an image classifier and
export it as detector weights (``MODEL.WEIGHTS``) for a frozen-BN backbone.

- ``glyphs``: the built-in classification set (generated; no image shared with the detection
  splits: its own seed and size, other fonts, lowercase letters, shapes and textures).
- ``folder``: a user's ImageFolder-style directory (``class_name/*.jpg``).
- ``train``: the deterministic, resumable training loop and held-out top-1.
- ``export``: the detector checkpoint and the check that a detector loads every backbone key.

The command is ``tools/pretrain_backbone.py``.
"""
