"""Section 8's rule (docs/REPRODUCTION.md) on fake runs: nothing trains."""
import json

import pytest

from focal_det.analysis.longtail_verdict import PAIRS, summarize
from tests.common import load_script


def _run(root, name, seed, apr, apf, ap=10.0, status="ok", finished=True):
    d = root / name / f"seed{seed}"
    d.mkdir(parents=True)
    if not finished:
        (d / "metrics.json").write_text(json.dumps({"iteration": 10, "loss": 1.0}) + "\n")
        return
    result = {"status": status, "AP": ap}
    if status == "diverged":
        result["diverged_at"] = 42
    (d / "result.json").write_text(json.dumps(result))
    lines = [{"iteration": 750, "bbox/AP": 1.0, "bbox/APr": 0.0, "bbox/APc": 0.0,
              "bbox/APf": 0.0},
             {"iteration": 999, "loss": 0.5},
             {"iteration": 3000, "bbox/AP": ap, "bbox/APr": apr, "bbox/APc": 5.0,
              "bbox/APf": apf, "bbox/APm": float("nan"), "bbox/AP-A": 3.0}]
    (d / "metrics.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def _grid(root, numbers, **kw):
    """numbers: config -> list of (APr, APf) per seed."""
    for name, per_seed in numbers.items():
        for seed, (apr, apf) in enumerate(per_seed):
            _run(root, name, seed, apr, apf, **kw.get(name, {}).get(seed, {}))


BASE = {"fl": [(1.0, 30.0), (2.0, 31.0), (1.5, 30.5)],
        "fl_rfs": [(2.0, 29.0), (3.0, 30.0), (2.5, 29.5)]}


def test_holds_for_both_pairs(tmp_path):
    _grid(tmp_path, {**BASE, "efl_s4": [(4.0, 30.0), (5.0, 30.5), (4.5, 31.0)],
                     "efl_s4_rfs": [(5.0, 29.0), (6.0, 29.5), (5.5, 30.0)]})
    s = summarize(str(tmp_path))
    assert [p["holds"] for p in s["pairs"]] == [True, True]
    assert s["verdict"] == "holds"
    fl = s["configs"]["fl"]
    assert fl["APr"]["mean"] == pytest.approx(1.5) and fl["APr"]["spread"] == pytest.approx(1.0)
    assert s["pairs"][0]["delta"]["APr"] == pytest.approx(3.0)


def test_apr_within_the_spread_and_apf_falling_both_fail(tmp_path):
    # without RFS: APr +0.9 against a spread of 1.0; with RFS: APr +3, APf -5 (spread 1)
    _grid(tmp_path, {**BASE, "efl_s4": [(2.4, 30.0), (2.9, 31.0), (1.9, 30.5)],
                     "efl_s4_rfs": [(5.0, 24.0), (6.0, 25.0), (5.5, 24.5)]})
    s = summarize(str(tmp_path))
    plain, rfs = s["pairs"]
    assert plain["holds"] is False and "APr does not rise" in plain["reasons"][0]
    assert rfs["holds"] is False and rfs["raises_apr"] and rfs["lowers_apf"]
    assert "APf falls" in rfs["reasons"][0]
    assert s["verdict"] == "does not hold"


def test_one_pair_only_and_a_diverged_run_counts_zero(tmp_path):
    _grid(tmp_path, {**BASE, "efl_s4": [(4.0, 30.0), (5.0, 30.5), (4.5, 31.0)],
                     "efl_s4_rfs": [(5.0, 29.0), (6.0, 29.5), (5.5, 30.0)]},
          efl_s4_rfs={1: {"status": "diverged"}})
    s = summarize(str(tmp_path))
    rfs = s["pairs"][1]
    assert s["configs"]["efl_s4_rfs"]["diverged"] == [1]
    assert s["configs"]["efl_s4_rfs"]["APf"]["per_seed"][1] == 0.0
    assert rfs["with_diverged_runs"] and rfs["holds"] is False  # APr spread 5.5, APf -10
    assert s["verdict"] == "holds without RFS only"


def test_an_unfinished_seed_is_not_run_never_no(tmp_path):
    _grid(tmp_path, {**BASE, "efl_s4": [(4.0, 30.0), (5.0, 30.5), (4.5, 31.0)],
                     "efl_s4_rfs": [(5.0, 29.0), (6.0, 29.5), (5.5, 30.0)]},
          efl_s4={2: {"finished": False}})
    s = summarize(str(tmp_path))
    assert s["pairs"][0]["holds"] is None and s["verdict"] == "not run"


def test_a_finished_run_without_lvis_metrics_is_an_error(tmp_path):
    d = tmp_path / "fl" / "seed0"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"status": "ok"}))
    (d / "metrics.json").write_text(json.dumps({"iteration": 3000, "bbox/AP": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no bbox/APr"):
        summarize(str(tmp_path))


def test_tool_writes_the_report(tmp_path):
    _grid(tmp_path / "runs", {**BASE, "efl_s4": [(4.0, 30.0), (5.0, 30.5), (4.5, 31.0)],
                              "efl_s4_rfs": [(5.0, 29.0), (6.0, 29.5), (5.5, 30.0)]})
    tool = load_script("tools/longtail_report.py")
    tool.main(["--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "out")])
    md = (tmp_path / "out" / "longtail.md").read_text()
    assert "Verdict (Section 8's rule): holds" in md and "fl_rfs / efl_s4_rfs" in md
    data = json.loads((tmp_path / "out" / "longtail.json").read_text())
    assert data["verdict"] == "holds" and len(data["pairs"]) == len(PAIRS)
    with pytest.raises(SystemExit, match="no such folder"):
        tool.main(["--runs", str(tmp_path / "none")])
