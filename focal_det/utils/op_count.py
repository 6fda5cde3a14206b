"""Count what a GPU pays for, on any device: dispatched ops and host-device synchronizations.

- **ops**: top-level operators in ``torch.profiler`` (``aten::*`` and ``focal_det::*`` events
  with no such event above them, forward and backward). On a GPU each is at least one kernel
  launch plus its Python and dispatcher overhead, whatever the tensor sizes.
- **syncs**: top-level ops whose subtree contains an op that must wait for the device
  (``aten::_local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``; ``aten::nonzero``:
  boolean indexing, ``nonzero``, one-argument ``torch.where``; ``aten::masked_select``), plus
  Python-level ``Tensor.tolist()`` / ``Tensor.numpy()`` calls, which reach the host without
  a profiled op on CPU tensors.
"""
import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict

import torch

__all__ = ["OpCount", "count_ops"]

_PREFIXES = ("aten::", "focal_det::")
_SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select"}


@dataclass
class OpCount:
    ops: int = 0
    syncs: int = 0
    by_name: Dict[str, int] = field(default_factory=dict)  # top-level op name -> count
    sync_by_name: Dict[str, int] = field(default_factory=dict)

    def as_dict(self, top: int = 15) -> dict:
        common = sorted(self.by_name.items(), key=lambda kv: -kv[1])[:top]
        return {"ops": self.ops, "syncs": self.syncs, "most_common_ops": dict(common),
                "syncs_by_op": dict(sorted(self.sync_by_name.items()))}


@contextlib.contextmanager
def _count_host_reads(counter: Dict[str, int]):
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def wrap(name, fn):
        def wrapper(self, *args, **kwargs):
            counter[name] = counter.get(name, 0) + 1
            return fn(self, *args, **kwargs)
        return wrapper

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def count_ops(fn: Callable[[], object]) -> OpCount:
    """Run ``fn`` once under the profiler and count its top-level ops and synchronizations."""
    host_reads: Dict[str, int] = {}
    with _count_host_reads(host_reads), torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU]
    ) as prof:
        fn()
    result = OpCount()
    top_of = {}
    for e in prof.events():
        if not e.name.startswith(_PREFIXES):
            continue
        top, parent = e, e.cpu_parent
        while parent is not None:
            if parent.name.startswith(_PREFIXES):
                top = parent
            parent = parent.cpu_parent
        if top is e:
            result.ops += 1
            result.by_name[e.name] = result.by_name.get(e.name, 0) + 1
        if e.name in _SYNC_OPS:
            top_of[top.id] = top.name  # one sync per top-level op, however deep
    for name in top_of.values():
        result.sync_by_name[name] = result.sync_by_name.get(name, 0) + 1
    for name, n in host_reads.items():
        result.sync_by_name[f"Tensor.{name}"] = n
    result.syncs = sum(result.sync_by_name.values())
    return result
