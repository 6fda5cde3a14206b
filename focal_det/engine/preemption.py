"""Preemption: a signal (SIGTERM, SIGUSR1 by default) stops training at the end of the current
iteration, on every rank at the same iteration, with a checkpoint of everything exact resume
needs, and the process exits with :data:`EXIT_PREEMPTED`.

- :func:`handling` (entered first thing in every worker) replaces the signals' handlers with one
  that only records the request: a second signal changes nothing, so nothing is interrupted
  half-way (checkpoints are written atomically anyway).
- :class:`PreemptionHook` (last hook of the trainer) checks the request before training starts
  and after every iteration; with several processes the ranks agree by an all-reduce (MAX) of
  their flags after every iteration, so a signal that reaches one rank stops them all at the
  same iteration (one collective of one element per iteration, and none in one process).
- Evaluation checks the request before every batch (:class:`StopOnSignal`, and the flag a rank
  publishes in the process group's store for the others), so a signal during a periodic or the
  final evaluation, or during ``--eval-only``, is honoured within one batch.
- The trainer catches :class:`Preempted`, rank 0 saves ``model_<iter>.pth`` (the last complete
  iteration) and ``last_checkpoint``, writes ``OUTPUT_DIR/preempted.json``, all ranks wait for
  it and exit with :data:`EXIT_PREEMPTED`; ``--resume`` continues exactly.
"""
import contextlib
import json
import logging
import os
import signal
import sys
import time
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger("focal_det")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; requeue scripts test it
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")
_STORE_KEY = "focal_det/preempted"


class Preempted(BaseException):
    """Raised to unwind training or evaluation after a signal (not an ``Exception``, so that
    Detectron2 does not log it as a training failure)."""


class _State:
    signal_name: Optional[str] = None  # the first signal received in this process
    store = None  # the process group's store, where a signalled rank tells the others
    announced = False


STATE = _State()


def signal_names(names: Iterable[str]):
    """Validated signal names (``TERM`` or ``SIGTERM``); an unknown one names itself."""
    out = []
    for name in names:
        if name.lower() == "none":
            continue
        full = name if name.upper().startswith("SIG") else "SIG" + name
        if not hasattr(signal, full.upper()):
            raise ValueError(f"--preempt-signals: {name!r} is not a signal of this system")
        out.append(full.upper())
    return out


def _handler(signum, frame):
    name = signal.Signals(signum).name
    if STATE.signal_name is None:
        STATE.signal_name = name
        logger.warning(f"Received {name}: stopping at the end of this iteration with a "
                       "checkpoint (a second signal changes nothing)")
    else:
        logger.warning(f"Received {name} again: already stopping")


@contextlib.contextmanager
def handling(names=DEFAULT_SIGNALS):
    """Inside the block, ``names`` (e.g. SIGTERM, SIGUSR1) are recorded instead of ending the
    process; the previous handlers come back after it. Main thread only."""
    STATE.signal_name, STATE.announced = None, False
    previous = {}
    for name in signal_names(names):
        previous[name] = signal.signal(getattr(signal, name), _handler)
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
        STATE.store = None


def attach_store() -> None:
    """Share the request through the default process group's store (several processes)."""
    if comm.get_world_size() > 1:
        get_store = getattr(dist.distributed_c10d, "_get_default_store", None)
        STATE.store = get_store() if get_store is not None else None


def requested(share: bool = True) -> bool:
    """This process was signalled, or (``share``) another rank said so in the store."""
    if STATE.signal_name is not None:
        if share and STATE.store is not None and not STATE.announced:
            STATE.store.set(_STORE_KEY, STATE.signal_name)
            STATE.announced = True
        return True
    if share and STATE.store is not None:
        try:
            if STATE.store.check([_STORE_KEY]):
                STATE.signal_name = STATE.store.get(_STORE_KEY).decode()
                return True
        except RuntimeError:  # the store is gone: the watchdog reports that
            return False
    return False


def agree(local: bool) -> bool:
    """True on every rank if any rank's ``local`` is True (all ranks call it together)."""
    if comm.get_world_size() == 1:
        return local
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class CompletionMarker(HookBase):
    """Registered first: records that iteration ``trainer.iter``'s update is done before any
    other hook (a periodic evaluation may be interrupted by a signal)."""

    def __init__(self):
        self.completed = -1  # the last iteration whose parameter update is done

    def before_train(self):
        self.completed = self.trainer.start_iter - 1

    def after_step(self):
        self.completed = self.trainer.iter


class PreemptionHook(HookBase):
    """Stops training on a recorded signal (see module docstring). Register it last, and its
    ``marker`` first."""

    def __init__(self):
        self.marker = CompletionMarker()

    @property
    def completed(self) -> int:
        return self.marker.completed

    def before_train(self):
        if agree(requested(share=False)):
            raise Preempted()

    def after_step(self):
        if agree(requested(share=False)):
            raise Preempted()


class StopOnSignal:
    """A data loader that raises :class:`Preempted` before the next batch once a signal was
    received here or by another rank (evaluation, where ranks need not agree on a batch)."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if requested():
                raise Preempted()
            yield batch


def save_and_exit(checkpointer, output_dir: str, start_iter: int,
                  hook: Optional[PreemptionHook]) -> None:
    """Rank 0 checkpoints the last complete iteration (if any since the start) and writes
    ``preempted.json``; every rank waits for it, then exits with :data:`EXIT_PREEMPTED`."""
    completed = hook.completed if hook is not None else -1
    start = time.time()
    saved = None
    if completed >= start_iter and comm.is_main_process():
        saved = f"model_{completed:07d}"
        checkpointer.save(saved, iteration=completed)
    if comm.is_main_process():
        from ..utils.files import atomic_write_text

        os.makedirs(output_dir, exist_ok=True)
        atomic_write_text(os.path.join(output_dir, "preempted.json"), json.dumps(
            {"signal": STATE.signal_name, "completed_iteration": completed,
             "checkpoint": saved, "exit_code": EXIT_PREEMPTED}))
    from . import watchdog

    watchdog.stop()  # peers leave from now on
    comm.synchronize()
    message = (f"Preempted by {STATE.signal_name} after iteration {completed}: "
               + (f"checkpoint {saved}.pth saved in {time.time() - start:.1f} s; " if saved
                  else "no new checkpoint on this rank; " if completed >= start_iter
                  else "nothing new to save; ")
               + f"exiting with code {EXIT_PREEMPTED}; continue with --resume")
    if comm.is_main_process():
        logger.warning(message)
    else:  # Detectron2 logs to the console from rank 0 only
        print(f"[rank {comm.get_rank()}] {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_PREEMPTED)
