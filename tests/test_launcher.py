"""The launcher and preemption share one signal list and one set of exit codes: the launcher
passes on to its workers exactly the signals the run handles (``--preempt-signals``)."""
import multiprocessing
import os
import signal
import time

import pytest

from focal_det.engine import launcher, preemption, watchdog


def test_exit_codes_are_the_documented_ones():
    # Requeue scripts test these numbers (README, Reliability): they are a public contract.
    assert preemption.EXIT_PREEMPTED == 75  # EX_TEMPFAIL
    assert watchdog.EXIT_PEER_LOST == 76


def _wait_for_signal(sig, ready, marker):
    got = []
    signal.signal(sig, lambda signum, frame: got.append(signum))
    ready.set()
    deadline = time.time() + 30
    while not got and time.time() < deadline:
        time.sleep(0.02)
    with open(marker, "w") as f:
        f.write(signal.Signals(got[0]).name if got else "nothing")


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_launcher_forwards_the_signals_the_run_handles(tmp_path, restore_handlers):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    launcher._forward_signals(["USR2"])
    assert signal.getsignal(signal.SIGUSR2) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert {s: signal.getsignal(s) for s in before} == before  # not handled: left alone

    ctx = multiprocessing.get_context("fork")
    ready, marker = ctx.Event(), tmp_path / "child"
    child = ctx.Process(target=_wait_for_signal, args=(signal.SIGUSR2, ready, str(marker)))
    child.start()
    try:
        assert ready.wait(30)
        os.kill(os.getpid(), signal.SIGUSR2)  # to the launcher: passed on to the worker
        child.join(60)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0 and marker.read_text() == "SIGUSR2"


def test_no_handled_signals_means_nothing_is_forwarded(restore_handlers):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    launcher._forward_signals(["none"])
    assert {s: signal.getsignal(s) for s in before} == before
    launcher._forward_signals(list(preemption.DEFAULT_SIGNALS))
    assert all(signal.getsignal(getattr(signal, name)) is not before.get(getattr(signal, name))
               for name in preemption.DEFAULT_SIGNALS)
    with pytest.raises(ValueError, match="--preempt-signals: 'NOPE'"):
        launcher._forward_signals(["NOPE"])
