"""Shared benchmark helpers: interleaved timing with medians, peak-RSS measurement, and the
rounds every benchmark runs (each ratio as median [min-max] over R independent rounds, and
whether a claim against its goal holds for every round, the median only, or none)."""
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple


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


def write_result(folder: str, name: str, data, markdown: Optional[str] = None) -> str:
    """``folder/name``: the benchmark's JSON, written whole (``benchmarks/results/`` holds the
    committed ones); with ``markdown``, also ``folder/<name without .json>.md``."""
    import json
    import os

    from focal_det.utils.files import atomic_write_text

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    if markdown is not None:
        atomic_write_text(os.path.splitext(path)[0] + ".md", markdown)
    return path


def environment() -> Dict[str, object]:
    """When and where a benchmark ran (the README quotes a ratio with its date, machine and
    command): UTC date and time, CPU model, logical CPUs, torch's threads, versions, GPU."""
    import datetime
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def emit(data, output: Optional[str], name: str, markdown: str) -> None:
    """The benchmark's end: the JSON to stdout, the ratio tables to stderr, and with
    ``--output`` both written to ``output/name`` (and its ``.md``)."""
    import json

    print(json.dumps(data, indent=2))
    print(markdown, file=sys.stderr)
    if output:
        write_result(output, name, data, markdown)


# --- Rounds: every benchmark runs R independent rounds and reports each ratio's spread ----------

ROUND_CLAIMS = ("every round", "median only", "none")


@dataclass(frozen=True)
class Goal:
    """A goal a ratio is held to: ``ratio <op> value``, as the issue that set it (``source``)
    states it. ``op`` is "<=" (lower is better: time or memory over Detectron2's) or ">="
    (higher is better: a speedup)."""
    ratio: str
    op: str
    value: float
    source: str

    def met(self, x: float) -> bool:
        if self.op not in ("<=", ">="):
            raise ValueError(f"Goal {self.ratio}: op must be '<=' or '>=', got {self.op!r}")
        return x <= self.value if self.op == "<=" else x >= self.value


def _rounds(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def add_rounds_arg(parser, default: int = 3) -> None:
    parser.add_argument("--rounds", type=_rounds, default=default,
                        help="independent rounds, each interleaved as one run was; the JSON "
                             "keeps every round's ratios and their median, min and max "
                             f"(default {default})")


def check_rounds(rounds: int) -> None:
    from focal_det.errors import FocalDetError

    if rounds < 1:
        raise FocalDetError(f"--rounds must be >= 1, got {rounds}")


def spread(values: Sequence[float]) -> Dict[str, object]:
    """``{"rounds": [each round's value], "median", "min", "max"}`` of one ratio."""
    values = [float(v) for v in values]
    return {"rounds": values, "median": statistics.median(values), "min": min(values),
            "max": max(values)}


def summarize_rounds(per_round: Sequence[Dict[str, Optional[float]]]) -> Dict[str, dict]:
    """Per ratio name, its :func:`spread` over the rounds. A ratio a benchmark does not measure
    in this configuration is None in every round and left out; one that is None in only some
    rounds is an error (a round that measured something else)."""
    names = [k for r in per_round for k in r]
    out = {}
    for name in dict.fromkeys(names):
        values = [r.get(name) for r in per_round]
        if all(v is None for v in values):
            continue
        if any(v is None for v in values):
            raise ValueError(f"ratio {name!r} is missing in some rounds: {values}")
        out[name] = spread(values)
    return out


def classify_claim(values: Sequence[float], goal: Goal) -> str:
    """"every round" if the goal holds in every round, "median only" if it holds for the
    median of the rounds but not in every round, else "none"."""
    if not values:
        raise ValueError(f"no rounds for {goal.ratio!r}")
    if all(goal.met(v) for v in values):
        return "every round"
    return "median only" if goal.met(statistics.median(values)) else "none"


def claims(summary: Dict[str, dict], goals: Sequence[Goal]) -> Dict[str, dict]:
    """Per goal (named by its ratio): the goal, the rounds that meet it and which claim holds
    (:func:`classify_claim`). A goal whose ratio was not measured is left out."""
    out = {}
    for goal in goals:
        if goal.ratio not in summary:
            continue
        values = summary[goal.ratio]["rounds"]
        out[goal.ratio] = {"goal": f"{goal.op} {goal.value:g}", "source": goal.source,
                           "median": summary[goal.ratio]["median"],
                           "rounds_meeting_goal": sum(goal.met(v) for v in values),
                           "rounds": len(values), "holds": classify_claim(values, goal)}
    return out


def run_rounds(one_round: Callable[[], Tuple[dict, Dict[str, Optional[float]]]], rounds: int,
               goals: Sequence[Goal] = (), label: str = "") -> Dict[str, object]:
    """Call ``one_round()`` (a whole interleaved measurement, returning its detailed result and
    its ratios) ``rounds`` times; return ``{"rounds", "per_round", "ratios", "claims"}``:
    every round's result, each ratio's :func:`spread` and the claims against ``goals``."""
    check_rounds(rounds)
    details, ratios = [], []
    for i in range(rounds):
        start = time.perf_counter()
        detail, r = one_round()
        details.append(detail)
        ratios.append(r)
        print(f"[{label or 'bench'}] round {i + 1}/{rounds}: {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
    summary = summarize_rounds(ratios)
    return {"rounds": rounds, "per_round": details, "ratios": summary,
            "claims": claims(summary, goals)}


def format_spread(s: Dict[str, object], digits: int = 2) -> str:
    """``median [min-max]``, as the README quotes a ratio."""
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def markdown_ratios(result: Dict[str, object], title: str,
                    run: Optional[Dict[str, object]] = None, command: str = "") -> str:
    """A table of every ratio as ``median [min-max]`` over the rounds, with its goal and
    claim where it has one, under the date, machine and command (``run``: :func:`environment`):
    what the README's tables are copied from."""
    where = (f"{run['date_utc']} UTC, {run['cpu']}, {run['logical_cpus']} logical CPUs, "
             f"{run['torch_threads']} torch threads; " if run else "")
    lines = [f"### {title}", "",
             f"{where}{result['rounds']} rounds; ratio: median [min-max]"
             + (f"; `{command}`" if command else ""), "",
             "| ratio | median [min-max] | goal | holds |", "|---|---|---|---|"]
    for name, s in result["ratios"].items():
        c = result["claims"].get(name)
        goal = f"{c['goal']} ({c['source']})" if c else ""
        holds = f"{c['holds']} ({c['rounds_meeting_goal']}/{c['rounds']})" if c else ""
        lines.append(f"| {name} | {format_spread(s)} | {goal} | {holds} |")
    return "\n".join(lines) + "\n"
