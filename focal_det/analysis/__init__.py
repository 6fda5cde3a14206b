"""Measurements behind docs/REPRODUCTION.md (imbalance of the training problem, where the loss
and its gradient come from). Tools under ``tools/`` are their command lines."""
