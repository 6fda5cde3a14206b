"""LVIS evaluation (AP, APr, APc, APf) on today's NumPy: Detectron2's ``LVISEvaluator`` with the
official ``lvis`` API (PyPI ``lvis`` 0.5.3), made to run on NumPy 2 without editing it.

The problem: ``lvis`` 0.5.3's ``LVISEval.accumulate`` calls ``np.float``, an alias of the
builtin ``float`` that NumPy 1.24 removed; every LVIS evaluation raises ``AttributeError``.

The fix (:func:`ensure_lvis_numpy_compat`), narrowly scoped and by feature, not by version:
each ``lvis`` module's bytecode is scanned for ``np.<alias>`` of a removed alias (``float``,
``int``, ``bool``, ``object``, ``str``, ``complex``); only where one is used *and* the
installed NumPy lacks it does that module's own global ``np`` become a view of NumPy that adds
exactly those aliases, each the builtin it always was (NumPy < 1.24: ``np.float is float``).
NumPy itself, and every other module, is untouched; an ``lvis`` that no longer uses them (its
repository fixed it in 2024, unreleased) or a NumPy that still has them is left as it is. The
numbers are therefore LVISEval's own (``tests/test_lvis_evaluation.py`` checks them against
hand-computed AP on a fixture and against COCOeval on exhaustively annotated data).

:class:`FocalLVISEvaluator` is Detectron2's ``LVISEvaluator`` (boxes) with the fix applied, a
per-class AP beside the summary ("AP-<class>", as Detectron2's COCO evaluator reports), and AP 0
instead of NaN when the model detects nothing (as :class:`focal_det.evaluation.FocalCOCOEvaluator`;
-100, LVIS's "none", for an area range or group without ground truth, as LVISEval says).
"""
import dis
import importlib
import json
import logging
import os
import types
from typing import Dict, List, Optional, Set

import numpy as np
from detectron2.evaluation import LVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

logger = logging.getLogger(__name__)

# NumPy 1.24 removed these aliases of Python builtins (deprecated since 1.20).
REMOVED_ALIASES = {"float": float, "int": int, "bool": bool, "object": object, "str": str,
                   "complex": complex}
LVIS_MODULES = ("lvis.eval", "lvis.lvis", "lvis.results", "lvis.vis", "lvis.colormap")
LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


class NumpyWithAliases(types.ModuleType):
    """NumPy plus the removed builtin aliases ``aliases`` names: what a module that was written
    for NumPy < 1.24 sees as its ``np``."""

    def __init__(self, numpy_module, aliases: Dict[str, type]):
        super().__init__(numpy_module.__name__)
        self.__dict__.update(aliases)
        self._numpy = numpy_module

    def __getattr__(self, name):
        return getattr(self._numpy, name)


def _code_objects(module):
    stack = [v.__code__ for v in vars(module).values() if isinstance(v, types.FunctionType)]
    stack += [f.__code__ for cls in vars(module).values() if isinstance(cls, type)
              and cls.__module__ == module.__name__
              for f in vars(cls).values() if isinstance(f, types.FunctionType)]
    while stack:
        code = stack.pop()
        yield code
        stack += [c for c in code.co_consts if isinstance(c, types.CodeType)]


def removed_aliases_used(module) -> Set[str]:
    """The removed NumPy aliases ``module``'s functions and methods read as ``<numpy>.<alias>``
    (``np.float``, ...), where ``<numpy>`` is any global name bound to the numpy module."""
    numpy_names = {k for k, v in vars(module).items()
                   if v is np or isinstance(v, NumpyWithAliases)}
    used = set()
    for code in _code_objects(module):
        previous = None
        for ins in dis.get_instructions(code):
            if (previous is not None and previous.opname in ("LOAD_GLOBAL", "LOAD_NAME")
                    and previous.argval in numpy_names
                    and ins.opname in ("LOAD_ATTR", "LOAD_METHOD")
                    and ins.argval in REMOVED_ALIASES):
                used.add(ins.argval)
            previous = ins
    return used


def patch_module(module) -> List[str]:
    """Give ``module`` a NumPy with the removed aliases it uses that this NumPy lacks; returns
    their names (empty: nothing to do, nothing changed)."""
    missing = sorted(a for a in removed_aliases_used(module) if not hasattr(np, a))
    names = [name for name, value in vars(module).items() if value is np]  # not yet a view
    if not missing or not names:
        return []
    view = NumpyWithAliases(np, {a: REMOVED_ALIASES[a] for a in missing})
    for name in names:
        setattr(module, name, view)
    return missing


def ensure_lvis_numpy_compat() -> Dict[str, List[str]]:
    """Apply :func:`patch_module` to the ``lvis`` package's modules (importing it; a missing
    ``lvis`` is an ImportError naming the requirement). Idempotent; returns what it changed
    this time, e.g. ``{"lvis.eval": ["float"]}``."""
    try:
        importlib.import_module("lvis")
    except ImportError as e:
        raise ImportError("LVIS evaluation needs the lvis package: pip install --no-deps "
                          "lvis==0.5.3 (requirements-nodeps.txt; `make venv` installs it)") from e
    changed = {}
    for name in LVIS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        aliases = patch_module(module)
        if aliases:
            changed[name] = aliases
            logger.info(f"{name} uses np.{', np.'.join(aliases)}, which NumPy {np.__version__} "
                        "removed: that module's np now provides the builtin(s) it meant")
    return changed


def evaluate_lvis_boxes(lvis_gt, results: List[dict], max_dets: int = 300,
                        class_names: Optional[List[str]] = None) -> Dict[str, float]:
    """Box AP of ``results`` (LVIS result dicts, 1-based category ids) with the official
    LVISEval, as Detectron2's ``_evaluate_predictions_on_lvis``, in percent; with
    ``class_names`` (indexed like the sorted category ids) also "AP-<name>" per class (NaN for
    a class with no ground truth). No results: every metric 0."""
    ensure_lvis_numpy_compat()
    from lvis import LVISEval, LVISResults

    if not results:
        logger.warning("The model made no detections: reporting LVIS AP = 0.")
        return _no_detections(lvis_gt)
    lvis_eval = LVISEval(lvis_gt, LVISResults(lvis_gt, results, max_dets=max_dets), "bbox")
    lvis_eval.run()
    lvis_eval.print_results()
    out = {m: float(lvis_eval.get_results()[m] * 100) for m in LVIS_METRICS}
    precision = lvis_eval.eval["precision"]
    if class_names is not None and len(class_names) == precision.shape[2]:
        # (IoU thresholds, recalls, classes in sorted id order, areas); -1: no ground truth
        for k, name in enumerate(class_names):
            p = precision[:, :, k, 0]
            p = p[p > -1]
            out[f"AP-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return out


def _no_detections(lvis_gt) -> Dict[str, float]:
    """What LVISEval reports for a model that detects nothing: 0 where there is ground truth,
    -100 (LVIS's "none") for an area range or frequency group without any."""
    anns = list(lvis_gt.anns.values())
    group = {c["id"]: c.get("frequency") for c in lvis_gt.cats.values()}
    areas = {"APs": (0, 32 ** 2), "APm": (32 ** 2, 96 ** 2), "APl": (96 ** 2, 1e10)}
    present = {"AP": bool(anns), "AP50": bool(anns), "AP75": bool(anns)}
    present.update({m: any(lo <= a["area"] <= hi for a in anns) for m, (lo, hi) in areas.items()})
    present.update({f"AP{g}": any(group[a["category_id"]] == g for a in anns) for g in "rcf"})
    return {m: 0.0 if present[m] else -100.0 for m in LVIS_METRICS}


class FocalLVISEvaluator(LVISEvaluator):
    """Detectron2's LVISEvaluator for boxes, on NumPy 2 (module docstring), with per-class AP
    and AP 0 for a model that detects nothing. ``max_dets_per_image``: LVIS's 300 unless
    given."""

    def __init__(self, dataset_name, output_dir=None, distributed=True, max_dets_per_image=None):
        ensure_lvis_numpy_compat()
        super().__init__(dataset_name, tasks=("bbox",), distributed=distributed,
                         output_dir=output_dir, max_dets_per_image=max_dets_per_image)

    def _eval_predictions(self, predictions):
        results = [r for p in predictions for r in p.get("instances", [])]
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            reverse = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
            results = [dict(r, category_id=reverse[r["category_id"]]) for r in results]
        else:  # Detectron2's LVIS loader: contiguous ids are the json's ids minus 1
            results = [dict(r, category_id=r["category_id"] + 1) for r in results]
        if self._output_dir:
            path = os.path.join(self._output_dir, "lvis_instances_results.json")
            with PathManager.open(path, "w") as f:
                f.write(json.dumps(results))
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        res = evaluate_lvis_boxes(self._lvis_api, results, self._max_dets_per_image or 300,
                                  self._metadata.get("thing_classes"))
        self._logger.info("Evaluation results for bbox: \n" + create_small_table(
            {m: res[m] for m in LVIS_METRICS}))
        self._results["bbox"] = res
