"""Which member of the sigmoid loss family a kernel computes."""
from typing import NamedTuple


class LossSpec(NamedTuple):
    """FL (``star`` False) or FL* with its parameters.

    CE is FL with gamma 0 and alpha -1; balanced CE is FL with gamma 0."""

    star: bool
    gamma: float
    alpha: float
    beta: float = 0.0
