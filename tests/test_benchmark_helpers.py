"""benchmarks/_common.py: what the benchmarks' timing helper reports, and how rounds are
summarized and claims against goals classified (tiny synthetic numbers, nothing timed)."""
import json
import mmap

import pytest

from benchmarks._common import (
    Goal,
    claims,
    classify_claim,
    environment,
    format_spread,
    interleaved,
    markdown_ratios,
    run_rounds,
    summarize_rounds,
    write_result,
)

PAGE = mmap.PAGESIZE


def _touch_fresh_pages(n_pages=2048):
    """Map anonymous memory and write one byte per page: each write faults a page in."""
    m = mmap.mmap(-1, n_pages * PAGE)
    for i in range(0, n_pages * PAGE, PAGE):
        m[i] = 1
    m.close()


def _spin(seconds=0.05):
    import time

    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_interleaved_reports_wall_cpu_and_page_faults_per_call():
    result = interleaved({"touch": _touch_fresh_pages, "spin": _spin, "noop": lambda: None},
                         repeats=3)
    assert set(result) == {"touch", "spin", "noop"}
    for r in result.values():
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
    # every call faults its 2048 fresh pages in; a call that touches no memory faults ~none
    assert result["touch"]["median_minor_page_faults"] >= 2048
    assert result["noop"]["median_minor_page_faults"] < 64
    # the spin burns >= 50 ms of CPU in user mode, the no-op none to speak of
    assert result["spin"]["median_user_cpu_s"] + result["spin"]["median_system_cpu_s"] >= 0.04
    assert result["noop"]["median_user_cpu_s"] < 0.02


def test_round_summary_keeps_every_round_and_its_median_min_max():
    per_round = [{"train_step": 0.87, "memory": 0.51, "variant": None},
                 {"train_step": 0.99, "memory": 0.50, "variant": None},
                 {"train_step": 0.92, "memory": 0.52, "variant": None}]
    s = summarize_rounds(per_round)
    assert set(s) == {"train_step", "memory"}  # never measured in any round: left out
    assert s["train_step"] == {"rounds": [0.87, 0.99, 0.92], "median": 0.92, "min": 0.87,
                               "max": 0.99}
    assert s["memory"]["median"] == 0.51
    assert format_spread(s["train_step"]) == "0.92 [0.87-0.99]"
    # an even number of rounds: the median is the mean of the middle two
    assert summarize_rounds([{"r": 1.0}, {"r": 4.0}, {"r": 2.0}, {"r": 3.0}])["r"]["median"] == 2.5


def test_round_summary_refuses_a_ratio_missing_in_some_rounds():
    with pytest.raises(ValueError, match="missing in some rounds"):
        summarize_rounds([{"r": 0.9}, {"r": None}])
    with pytest.raises(ValueError, match="missing in some rounds"):
        summarize_rounds([{"r": 0.9}, {}])


@pytest.mark.parametrize("values,goal,expected", [
    ([0.80, 0.84, 0.85], Goal("t", "<=", 0.85, "issue 7"), "every round"),  # equal meets it
    ([0.80, 0.84, 0.90], Goal("t", "<=", 0.85, "issue 7"), "median only"),
    ([0.80, 0.87, 0.90], Goal("t", "<=", 0.85, "issue 7"), "none"),  # one round is not enough
    ([0.99, 0.92, 0.87], Goal("t", "<=", 0.85, "issue 7"), "none"),
    ([4.4, 3.1, 3.0], Goal("s", ">=", 3.0, "issue 12"), "every round"),
    ([4.4, 3.1, 2.9], Goal("s", ">=", 3.0, "issue 12"), "median only"),
    ([2.0, 3.5, 2.9], Goal("s", ">=", 3.0, "issue 12"), "none"),
    ([0.5], Goal("m", "<=", 0.8, "issue 7"), "every round"),
    ([0.81], Goal("m", "<=", 0.8, "issue 7"), "none"),
    # two rounds: the median (their mean) may meet it when one round does not
    ([0.84, 0.86], Goal("t", "<=", 0.85, "issue 7"), "median only"),
])
def test_claim_holds_for_every_round_the_median_only_or_none(values, goal, expected):
    assert classify_claim(values, goal) == expected


def test_claim_rejects_no_rounds_and_an_unknown_operator():
    with pytest.raises(ValueError):
        classify_claim([], Goal("t", "<=", 0.85, "x"))
    with pytest.raises(ValueError, match="op"):
        classify_claim([0.5], Goal("t", "<", 0.85, "x"))


def test_claims_against_goals_and_the_markdown_table():
    summary = summarize_rounds([{"train_step": 0.84, "inference": 0.78, "memory": 0.5},
                                {"train_step": 0.88, "inference": 0.81, "memory": 0.5},
                                {"train_step": 0.86, "inference": 0.79, "memory": 0.5}])
    goals = [Goal("train_step", "<=", 0.85, "issue 7"), Goal("inference", "<=", 0.8, "issue 7"),
             Goal("not_measured", "<=", 1.0, "issue 7")]
    c = claims(summary, goals)
    assert set(c) == {"train_step", "inference"}
    assert c["train_step"] == {"goal": "<= 0.85", "source": "issue 7", "median": 0.86,
                               "rounds_meeting_goal": 1, "rounds": 3, "holds": "none"}
    assert c["inference"]["holds"] == "median only"
    assert c["inference"]["rounds_meeting_goal"] == 2
    table = markdown_ratios({"rounds": 3, "ratios": summary, "claims": c}, "bench")
    assert "| train_step | 0.86 [0.84-0.88] | <= 0.85 (issue 7) | none (1/3) |" in table
    assert "| memory | 0.50 [0.50-0.50] |  |  |" in table
    run = environment()
    assert run["logical_cpus"] >= 1 and run["date_utc"][:2] == "20" and run["cpu"]
    table = markdown_ratios({"rounds": 3, "ratios": summary, "claims": c}, "bench", run,
                            "python -m benchmarks.bench_x --rounds 3")
    assert f"{run['date_utc']} UTC, {run['cpu']}, " in table  # when and where, then how
    assert "3 rounds; ratio: median [min-max]; `python -m benchmarks.bench_x --rounds 3`" in table


def test_run_rounds_calls_each_round_afresh_and_writes_json_and_markdown(tmp_path):
    ratios = iter([0.84, 0.90, 0.80])
    calls = []

    def one_round():
        calls.append(1)
        r = next(ratios)
        return {"median_s": r}, {"train_step": r}

    result = run_rounds(one_round, 3, [Goal("train_step", "<=", 0.85, "issue 7")], "test")
    assert len(calls) == 3 and result["rounds"] == 3
    assert result["per_round"] == [{"median_s": 0.84}, {"median_s": 0.90}, {"median_s": 0.80}]
    assert result["ratios"]["train_step"]["rounds"] == [0.84, 0.90, 0.80]
    assert result["claims"]["train_step"]["holds"] == "median only"
    path = write_result(str(tmp_path), "bench_x.json", result, markdown="| table |\n")
    assert json.load(open(path)) == result
    assert (tmp_path / "bench_x.md").read_text() == "| table |\n"
    with pytest.raises(Exception, match="--rounds"):
        run_rounds(one_round, 0)


def test_rounds_flag_defaults_to_three_and_refuses_fewer_than_one():
    import argparse

    from benchmarks._common import add_rounds_arg

    parser = argparse.ArgumentParser()
    add_rounds_arg(parser)
    assert parser.parse_args([]).rounds == 3
    assert parser.parse_args(["--rounds", "5"]).rounds == 5
    for bad in ("0", "-1", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--rounds", bad])
