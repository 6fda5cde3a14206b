"""Shared benchmark helpers: interleaved timing with medians, peak-RSS measurement."""
import resource
import statistics
import time
from typing import Callable, Dict, List


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (Linux); return the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


def interleaved(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None) -> Dict[str, Dict[str, float]]:
    """Run every fn once per round, `repeats` rounds; return per fn the median/min/max wall
    seconds, and the medians of the process's CPU seconds in user and kernel mode and of its
    minor page faults per call (from getrusage; they say whether wall time went to
    computation or to the kernel, e.g. faulting in freshly mapped memory)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    usage: Dict[str, List[tuple]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            usage[name].append((after.ru_utime - before.ru_utime,
                                after.ru_stime - before.ru_stime,
                                after.ru_minflt - before.ru_minflt))
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                "median_user_cpu_s": statistics.median(u[0] for u in usage[k]),
                "median_system_cpu_s": statistics.median(u[1] for u in usage[k]),
                "median_minor_page_faults": statistics.median(u[2] for u in usage[k])}
            for k, v in times.items()}


def peak_extra_bytes(fn: Callable[[], None]) -> int:
    """Peak RSS growth (bytes) while running fn once, on CPU."""
    base = reset_peak_rss()
    fn()
    return max(0, peak_rss() - base)


def write_result(folder: str, name: str, data) -> str:
    """``folder/name``: the benchmark's JSON, written whole (``benchmarks/results/`` holds the
    committed ones)."""
    import json
    import os

    from focal_det.utils.files import atomic_write_text

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
