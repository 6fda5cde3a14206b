"""A lost rank ends the run within a bounded time, with one message naming it.

When a worker dies (SIGKILL, OOM killer, a lost machine), the others wait in their next
collective until the process group's timeout, or fail with a message that does not say which
rank is gone. Here every rank writes a heartbeat (a counter) to the process group's store every
``period`` seconds from a daemon thread, and reads the others'; a rank whose counter has not
moved for ``timeout`` seconds, or a store that no longer answers (it lives with rank 0 or the
launcher), ends this process with :data:`EXIT_PEER_LOST` after logging which rank was lost.
``FOCAL_DET_PEER_TIMEOUT`` (seconds, default 60) sets the bound; checkpoints already written are
untouched (they are written atomically), so ``--resume`` continues exactly.
"""
import logging
import os
import sys
import threading
import time

import torch.distributed as dist

logger = logging.getLogger("focal_det")

EXIT_PEER_LOST = 76
_PREFIX = "focal_det/heartbeat/"
_STOP = threading.Event()
_THREAD = [None, (0.0, 0.0)]  # the watchdog thread, (timeout, period)


def peer_timeout() -> float:
    value = os.environ.get("FOCAL_DET_PEER_TIMEOUT", "60")
    try:
        timeout = float(value)
    except ValueError:
        raise ValueError(f"FOCAL_DET_PEER_TIMEOUT={value!r} is not a number of seconds") from None
    if timeout <= 0:
        raise ValueError(f"FOCAL_DET_PEER_TIMEOUT={value!r} must be > 0")
    return timeout


def _lost(message: str) -> None:
    if _STOP.is_set():  # the run is ending normally: peers leave, and so does the store
        return
    logger.error(message)
    print(f"focal_det: {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_LOST)  # other threads may be blocked in a collective: exit now


def _watch(store, rank: int, world: int, timeout: float, period: float) -> None:
    beats = 0
    last_seen = {r: (None, time.monotonic()) for r in range(world) if r != rank}
    while not _STOP.is_set():
        beats += 1
        try:
            store.set(f"{_PREFIX}{rank}", str(beats))
            values = {r: store.get(f"{_PREFIX}{r}") if store.check([f"{_PREFIX}{r}"]) else None
                      for r in last_seen}
        except Exception as e:  # the store's host (rank 0 or the launcher) is gone
            _lost(f"rank {rank}: the process group's store stopped answering ({e}); "
                  f"rank 0 (which serves it) or the launcher is lost; stopping this rank "
                  f"(exit code {EXIT_PEER_LOST})")
            return
        now = time.monotonic()
        for r, value in values.items():
            previous, since = last_seen[r]
            if value is not None and value != previous:
                last_seen[r] = (value, now)
            elif now - since > timeout:
                _lost(f"rank {r} is lost: no heartbeat for {now - since:.0f} s (limit "
                      f"{timeout:.0f} s, FOCAL_DET_PEER_TIMEOUT); stopping rank {rank} "
                      f"(exit code {EXIT_PEER_LOST}); continue with --resume")
        _STOP.wait(period)


def running() -> bool:
    return _THREAD[0] is not None and _THREAD[0].is_alive() and not _STOP.is_set()


def await_verdict(error: BaseException) -> None:
    """After a collective failed with ``error``: give the watchdog the time it needs to name the
    lost rank (it ends the process then); return if no rank is found lost (a real error)."""
    if not running():
        return
    timeout, period = _THREAD[1]
    logger.warning(f"A collective failed ({type(error).__name__}); checking which rank is lost "
                   f"(up to {timeout + 2 * period:.0f} s)")
    _THREAD[0].join(timeout + 2 * period)


def stop() -> None:
    """The run is ending (finished, or preempted): peers may leave from now on."""
    _STOP.set()


def start(timeout_s: float = None, period_s: float = None) -> bool:
    """Start the heartbeat thread of this rank (after ``init_process_group``); False where the
    store is not reachable through this torch's API (then only the process group's own timeout
    bounds the wait)."""
    get_store = getattr(dist.distributed_c10d, "_get_default_store", None)
    if get_store is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return False
    _STOP.clear()
    timeout = peer_timeout() if timeout_s is None else timeout_s
    period = period_s or max(0.5, min(5.0, timeout / 10))
    thread = threading.Thread(target=_watch, name="focal_det-watchdog", daemon=True,
                              args=(get_store(), dist.get_rank(), dist.get_world_size(),
                                    timeout, period))
    thread.start()
    _THREAD[0], _THREAD[1] = thread, (timeout, period)
    return True
