"""``python -m focal_det.engine ...`` is ``python train_net.py ...`` (for tools that start
training runs as child processes, wherever the repository's scripts are)."""
import focal_det  # noqa: F401  (registers focal_det's components)
from focal_det.engine import run_command

run_command(prog="python -m focal_det.engine")
