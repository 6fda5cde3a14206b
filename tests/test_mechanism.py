"""Issue 37 (c)'s run plan (docs/REPRODUCTION.md Section 7): the order and stop rules fixed
before the runs, on fake run results (nothing trains)."""
import pytest

from focal_det.analysis import ablation  # noqa: F401  (registers the mechanism grid)
from focal_det.analysis.grids import GRIDS
from focal_det.analysis.mechanism import (SINGLE_CHANGES, ce_ladder, common_lr, fl_ladder,
                                          measured_boundary, run_plan)
from focal_det.analysis.mechanism_grid import BASE_LR


def _fake(finite_names):
    calls = []

    def run(entry, seed):
        calls.append((entry.name, seed))
        ok = entry.name in finite_names
        return {"name": entry.name, "seed": seed, "status": "ok" if ok else "diverged",
                **({} if ok else {"diverged_at": 10})}
    return run, calls


@pytest.mark.parametrize("parallel", [False, True])
def test_plan_stops_the_sweep_at_the_first_finite_lr(parallel):
    finite = {"ce_a0.75_lr1_4", "ce_a0.75_lr1_8", "ce_a0.75_lr1_16", "fl_g2_lr2x",
              "ce_a0.25_lr1_4", "ce_a0.50_lr1_8"}
    run, calls = _fake(finite)
    results = run_plan(run, parallel=parallel)
    names = list(results)
    assert names[:3] == ["ce_a0.75_base", "ce_a0.75_lr1_2", "ce_a0.75_lr1_4"]
    assert "ce_a0.75_lr1_8" not in results  # below the boundary: not run
    assert names[3:7] == list(SINGLE_CHANGES)
    assert names[7:9] == ["fl_g2_lr2x", "fl_g2_lr4x"]  # FL stops at its first NaN
    assert names[9:] == ["ce_a0.25_lr1_4", "ce_a0.50_lr1_4", "ce_a0.50_lr1_8"]
    assert common_lr(results) == BASE_LR / 8
    assert sorted(calls) == sorted((n, s) for n in names for s in (0, 1))
    b = measured_boundary(results, ce_ladder(0.75))
    assert b == {"lr": BASE_LR / 4, "kind": "boundary"}
    assert measured_boundary(results, fl_ladder()) == {"lr": BASE_LR * 2, "kind": "boundary"}


def test_alpha_050_starts_below_alpha_025s_boundary():
    # Section 7.2: α .25 finite only at 1/32, so α .5 starts there (its higher LRs cannot set
    # the common LR); the common LR is the lowest of the three boundaries
    finite = {"ce_a0.75_lr1_4", "ce_a0.25_lr1_32", "ce_a0.50_lr1_64"}
    run, _ = _fake(finite)
    results = run_plan(run)
    alphas = [n for n in results if n.startswith(("ce_a0.25", "ce_a0.50"))]
    assert alphas == ["ce_a0.25_lr1_4", "ce_a0.25_lr1_8", "ce_a0.25_lr1_16", "ce_a0.25_lr1_32",
                      "ce_a0.50_lr1_32", "ce_a0.50_lr1_64"]
    assert common_lr(results) == BASE_LR / 64


def test_no_common_lr_when_alpha_025_never_trains():
    run, _ = _fake({"ce_a0.75_lr1_4"})
    results = run_plan(run)
    assert "ce_a0.25_lr1_64" in results
    assert not any(n.startswith("ce_a0.50") for n in results)  # it cannot set a common LR
    assert common_lr(results) is None


def test_one_diverged_seed_is_not_finite():
    def run(entry, seed):
        ok = entry.name == "ce_a0.75_lr1_16" or (entry.name == "ce_a0.75_lr1_8" and seed == 0)
        return {"status": "ok" if ok else "diverged"}
    results = run_plan(run)
    assert "ce_a0.75_lr1_16" in results
    assert measured_boundary(results, ce_ladder(0.75))["lr"] == BASE_LR / 16


def test_every_planned_entry_is_in_the_grid():
    grid = {e.name for e in GRIDS["letters_paper_mechanism"]}
    planned = ({n for _, n in ce_ladder(0.75) + ce_ladder(0.25) + ce_ladder(0.5) + fl_ladder()}
               | set(SINGLE_CHANGES))
    assert planned == grid


def test_within_2x_rule():
    from focal_det.analysis.mechanism_report import within_2x
    b = {"lr": 0.001, "kind": "boundary"}
    assert within_2x(0.0019, b) and within_2x(0.00051, b)
    assert within_2x(0.0021, b) is False and within_2x(0.00049, b) is False
    low = {"lr": 0.005, "kind": "at least"}
    assert within_2x(0.001, low) is False and within_2x(0.004, low) is None
    assert within_2x(None, b) is None and within_2x(0.01, None) is None


def test_report_from_fake_runs(tmp_path):
    import json
    from tests.common import load_script
    runs = tmp_path / "runs"
    for name, seed, status in (("ce_a0.75_base", 0, "diverged"), ("ce_a0.75_base", 1, "diverged"),
                               ("ce_a0.75_lr1_2", 0, "ok"), ("ce_a0.75_lr1_2", 1, "ok"),
                               ("fl_g2_lr2x", 0, "ok"), ("fl_g2_lr2x", 1, "diverged")):
        d = runs / name / f"seed{seed}"
        d.mkdir(parents=True)
        r = {"status": status, "AP": 1.0} if status == "ok" else {"status": status,
                                                                   "diverged_at": 12}
        (d / "result.json").write_text(json.dumps(r))
    tool = load_script("tools/mechanism_report.py")
    s = tool.main(["--runs", str(runs), "--probe", str(tmp_path / "none"),
                   "--output", str(tmp_path / "out")])
    assert s["ce_boundary"] == {"lr": BASE_LR / 2, "kind": "boundary"}
    assert s["fl_boundary"] == {"lr": BASE_LR, "kind": "boundary"}
    text = (tmp_path / "out" / "mechanism.md").read_text()
    assert "NaN at 12" in text and "finite (1.0 AP)" in text
    assert s["common_lr"] is None  # no α .25 / .5 runs
    assert "α 0.25: none in the ladder" in text and "common LR: -" in text
