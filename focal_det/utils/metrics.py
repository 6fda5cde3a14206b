"""Reading the JSON-lines files a run appends to: Detectron2's ``metrics.json`` (its
``JSONWriter`` writes one object a line) and ``grad_stats.jsonl``. Every reader of them
(``analysis/ablation.py``, ``analysis/divergence.py``, ``analysis/grad_stats.py``,
``utils/vis.py``) goes through :func:`read_json_lines`.

A run killed while writing leaves a cut last line; a resumed run then appends its first row to
that same line (the file is opened for appending, and the cut line has no newline). A cut line
is passed over, and a whole row that follows it on the same line is kept. Rows come in the
file's order; a resumed run logs some iterations twice, and callers keep the last one.
"""
import json
import os
from typing import List, Optional

__all__ = ["METRICS_FILE", "read_json_lines", "read_metrics"]

METRICS_FILE = "metrics.json"


def _row(line: str) -> Optional[dict]:
    try:
        row = json.loads(line)
    except ValueError:  # cut by a kill; a resumed run's first row may follow on this line
        row = None
        start = line.find("{", 1)
        while start != -1 and row is None:
            try:
                row = json.loads(line[start:])
            except ValueError:
                start = line.find("{", start + 1)
    return row if isinstance(row, dict) else None


def read_json_lines(path: str) -> List[dict]:
    """The objects of the JSON-lines file ``path``, one per line (none if it does not exist);
    a line cut by a kill is passed over (see the module docstring)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            row = _row(line) if line else None
            if row is not None:
                rows.append(row)
    return rows


def read_metrics(output_dir: str) -> List[dict]:
    """The rows of ``output_dir/metrics.json`` (training rows, evaluation rows), in order."""
    return read_json_lines(os.path.join(output_dir, METRICS_FILE))
