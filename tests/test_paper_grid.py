"""Issue 28's grid on the corrected recipe (docs/REPRODUCTION.md 6.11): the paper's claims each
decided by its rule, the untested departures' grid, ``ablate.py --report-only`` and the
warm-up guard of ``--warmup config``."""
import json
import os

import pytest

from focal_det.analysis import paper_claims as C
from focal_det.analysis.grids import GRIDS
from tests.common import CONFIGS, load_script
from tests.test_paper_recipe import _row

PAPER = os.path.join(CONFIGS, "builtin", "retinanet_R18_letters_paper.yaml")
CE, FL, CEP = "BalancedCrossEntropy", "FocalLoss", "CrossEntropy"


def _grid(**over):
    rows = {"ce_a0.25": _row("ce_a0.25", CE, [5.0, 6.0]),
            "ce_a0.50": _row("ce_a0.50", CE, [8.0, 9.0]),
            "ce_a0.75": _row("ce_a0.75", CE, [10.0, 11.0]),
            "fl_g0.5_a0.50": _row("fl_g0.5_a0.50", FL, [11.0, 12.0]),
            "fl_g1_a0.25": _row("fl_g1_a0.25", FL, [12.0, 12.5]),
            "fl_g2_a0.25": _row("fl_g2_a0.25", FL, [13.0, 14.0]),
            "fl_g5_a0.25": _row("fl_g5_a0.25", FL, [11.0, 11.5]),
            "flstar_g2_b1": _row("flstar_g2_b1", "FocalLossStar", [12.6, 12.8]),
            "flstar_g4_b0": _row("flstar_g4_b0", "FocalLossStar", [13.5, 13.6]),
            "ce_noprior": _row("ce_noprior", CEP, [0.0, 0.0], diverged=(0, 1))}
    rows.update(over)
    return [r for r in rows.values() if r is not None]


def _agrees(rows, figure4=None):
    return {c["claim"].split(":")[0]: c["agrees"] for c in C.claims(rows, figure4)}


def _figure4(share):
    return {"negative": {"gammas": {"2": {"hardest_share": {"0.05": share},
                                          "fraction_carrying_half": 0.01}}}}


def test_the_paper_agrees_with_itself_and_each_rule_can_fail():
    ok = _agrees(_grid(), _figure4(0.8))
    assert set(ok.values()) == {"**yes**"}, ok
    # Table 1a: one diverged seed, or α .75 not best
    assert _agrees(_grid(**{"ce_a0.50": _row("ce_a0.50", CE, [8.0, 0.0], diverged=(1,))}))[
        "Table 1a"] == "no"
    assert _agrees(_grid(**{"ce_a0.25": _row("ce_a0.25", CE, [12.0, 12.0])}))["Table 1a"] == "no"
    # Table 1b: γ 1 above γ 2
    assert _agrees(_grid(**{"fl_g1_a0.25": _row("fl_g1_a0.25", FL, [14.0, 15.0])}))[
        "Table 1b"] == "no"
    # Table 3: 12.6/12.8 is within 1 AP of 13.5 (FL γ 2's mean); 11.0/11.2 is not, nor overlaps
    assert _agrees(_grid(**{"flstar_g2_b1": _row("flstar_g2_b1", FL, [11.0, 11.2])}))[
        "Table 3"] == "no"
    assert _agrees(_grid(**{"flstar_g2_b1": _row("flstar_g2_b1", FL, [11.0, 13.2])}))[
        "Table 3"] == "**yes**"  # its seed range overlaps FL γ 2's
    noprior = _row("ce_noprior", CEP, [0.0, 3.0], diverged=(0,))
    assert _agrees(_grid(ce_noprior=noprior))["CE without the prior diverges"] == "no"
    assert _agrees(_grid(**{"fl_g2_a0.25": _row("fl_g2_a0.25", FL, [10.5, 14.0])}))[
        "FL γ 2 beats the best α-CE"] == "no"  # within the seed spread
    assert _agrees(_grid(), _figure4(0.3))["Figure 4"] == "no"


def test_a_config_without_every_seed_is_not_run_and_table3_needs_fl_g2_to_train():
    one_seed = _row("fl_g5_a0.25", FL, [20.0])  # would beat γ 2 on its one seed
    assert _agrees(_grid(**{"fl_g5_a0.25": one_seed}))["Table 1b"] == "no"  # no seeds given
    got = {c["claim"].split(":")[0]: c["agrees"]
           for c in C.claims(_grid(**{"fl_g5_a0.25": one_seed}), seeds=[0, 1])}
    assert got["Table 1b"] == "not run" and got["Table 1a"] == "**yes**"
    lone_ce = {n: _row(n, CE, [30.0]) for n in ("ce_a0.25", "ce_a0.50")}
    got = {c["claim"].split(":")[0]: c["agrees"]
           for c in C.claims(_grid(**lone_ce), seeds=[0, 1])}
    assert got["FL γ 2 beats the best α-CE"] == got["Table 1a"] == "not run"
    nan_fl2 = _row("fl_g2_a0.25", FL, [0.0, 0.0], diverged=(0, 1))
    assert _agrees(_grid(**{"fl_g2_a0.25": nan_fl2,
                            "flstar_g2_b1": _row("flstar_g2_b1", FL, [0.0, 0.5]),
                            "flstar_g4_b0": _row("flstar_g4_b0", FL, [0.2, 0.1])}))[
        "Table 3"] == "no"  # FL* "as good as" a diverged FL γ 2 is not the paper's claim


def test_checks_grid_loads_and_changes_only_the_implementation():
    from focal_det import cli

    grid = {e.name: e for e in GRIDS["letters_paper_checks"]}
    cfgs = {n: cli.load_yaml_config(PAPER, e.opts()) for n, e in grid.items()}
    assert not cfgs["ce_a0.75_nchw_unfolded"].MODEL.FOCAL_DET.CHANNELS_LAST
    assert not cfgs["ce_a0.75_nchw_unfolded"].MODEL.FOCAL_DET.FOLD_NORMS
    fl = cfgs["fl_g0_a0.75"].MODEL.FOCAL_DET.CLS_LOSS
    assert (fl.NAME, fl.GAMMA, fl.ALPHA) == ("FocalLoss", 0.0, 0.75)
    d2 = cfgs["d2_retinanet_ce_a0.75"].MODEL
    assert d2.META_ARCHITECTURE == "RetinaNet"
    assert (d2.RETINANET.FOCAL_LOSS_GAMMA, d2.RETINANET.FOCAL_LOSS_ALPHA) == (0.0, 0.75)
    for cfg in cfgs.values():
        assert cfg.SOLVER.STEPS == () and cfg.SOLVER.WARMUP_ITERS == 500


def test_missing_runs_are_not_run_never_no():
    rows = _grid(**{"flstar_g4_b0": None, "ce_noprior": None, "fl_g5_a0.25": None})
    got = _agrees(rows)
    assert got["Table 3"] == got["Table 1b"] == got["Figure 4"] == "not run"
    assert got["CE without the prior diverges"] == "not run"
    assert got["Table 1a"] == "**yes**"
    table = C.markdown(C.claims(rows))
    assert table.count("\n") == 2 + 6 and "| Table 1a: α-CE trains; α .75 best |" in table


def _node(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_candidate_grid_changes_one_departure_each():
    from focal_det import cli

    grid = {e.name: e for e in GRIDS["letters_paper_candidates"]}
    assert set(grid) == {"ce_a0.75_base", "ce_a0.75_image256", "ce_a0.75_image256_anchors4x",
                         "ce_a0.75_batch16"}
    base = cli.load_yaml_config(PAPER, grid["ce_a0.75_base"].opts())
    assert base.SOLVER.STEPS == () and base.SOLVER.WARMUP_ITERS == 500
    assert base.MODEL.FOCAL_DET.CLS_LOSS.ALPHA == 0.75
    for name, e in grid.items():
        cfg = cli.load_yaml_config(PAPER, e.opts())
        diff = {k for k in ("INPUT", "MODEL.ANCHOR_GENERATOR", "SOLVER")
                if str(_node(cfg, k)) != str(_node(base, k))}
        assert diff == {"ce_a0.75_image256": {"INPUT"},
                        "ce_a0.75_image256_anchors4x": {"INPUT", "MODEL.ANCHOR_GENERATOR"},
                        "ce_a0.75_batch16": {"SOLVER"}}.get(name, set()), name
    sizes = cli.load_yaml_config(PAPER, grid["ce_a0.75_image256_anchors4x"].opts())
    strides = (8, 16, 32, 64, 128)
    for s, level, old in zip(strides, sizes.MODEL.ANCHOR_GENERATOR.SIZES,
                             base.MODEL.ANCHOR_GENERATOR.SIZES):
        assert level[0] == 4 * s and level[0] == pytest.approx(2 * old[0])
        assert level[2] == pytest.approx(2 * old[2], rel=1e-4)
    b16 = cli.load_yaml_config(PAPER, grid["ce_a0.75_batch16"].opts()).SOLVER
    assert (b16.IMS_PER_BATCH, b16.BASE_LR) == (16, 0.01)


def test_config_warmup_longer_than_the_run_is_refused(tmp_path):
    tool = load_script("tools/ablate.py")
    with pytest.raises(SystemExit, match=r"the config's SOLVER.WARMUP_ITERS \(500\) is longer "
                                         r"than --iters 300"):
        tool.main(["--config-file", PAPER, "--grid", "letters_paper_candidates",
                   "--iters", "300", "--warmup", "config", "--output", str(tmp_path), "--dry-run"])
    section6 = os.path.join(CONFIGS, "builtin", "retinanet_R18_letters_paper_6it.yaml")
    with pytest.raises(SystemExit, match=r"ce_a0.75_warmup500's SOLVER.WARMUP_ITERS \(500\)"):
        tool.main(["--config-file", section6, "--grid", "letters_paper_diagnosis",
                   "--iters", "300", "--warmup", "config", "--output", str(tmp_path), "--dry-run"])
    assert not os.listdir(tmp_path)  # refused before any run folder


def _result(folder, name, seed, ap):
    run = folder / name / f"seed{seed}"
    run.mkdir(parents=True)
    metrics = {m: ap for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    (run / "result.json").write_text(json.dumps(
        {"name": name, "seed": seed, "status": "ok", "seconds": 1.0, **metrics,
         "ap_curve": [[500, ap / 2], [1000, ap]], "loss_curve": [[0, 1.0], [999, 0.5]],
         "explosion": None}))


def test_report_only_tabulates_finished_runs_and_names_the_rest(tmp_path, capsys):
    tool = load_script("tools/ablate.py")
    _result(tmp_path, "ce_a0.75", 0, 7.0)
    _result(tmp_path, "ce_a0.75", 1, 9.0)
    _result(tmp_path, "fl_g2_a0.25", 0, 12.0)
    argv = ["--config-file", PAPER, "--grid", "letters_paper", "--only", "ce_a0.75",
            "fl_g2_a0.25", "ce_a0.25", "--iters", "1000", "--eval-points", "2", "--warmup",
            "config", "--seeds", "0", "1", "--output", str(tmp_path), "--report-only"]
    results = tool.main(argv)
    assert sorted((r["name"], r["seed"]) for r in results) == [
        ("ce_a0.75", 0), ("ce_a0.75", 1), ("fl_g2_a0.25", 0)]  # nothing was trained
    out = capsys.readouterr().out
    assert "left out: ce_a0.25/seed0, ce_a0.25/seed1, fl_g2_a0.25/seed1" in out
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert data["not_finished"] == ["ce_a0.25/seed0", "ce_a0.25/seed1", "fl_g2_a0.25/seed1"]
    assert {r["name"]: r["AP"] for r in data["rows"]} == {"ce_a0.75": 8.0, "fl_g2_a0.25": 12.0}
    assert "Not finished (left out)" in (tmp_path / "ablation.md").read_text()
    assert not (tmp_path / "ce_a0.25").exists()
    with pytest.raises(SystemExit, match="no run .* has finished"):
        tool.main(argv[:-3] + ["--output", str(tmp_path / "empty"), "--report-only"])


def test_curves_chart_draws_diverged_configs_and_best_of_breaks_ties_by_survival(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from focal_det.analysis.ablation_report import best_of, plot_curves

    early = _row("ce_a0.25", CE, [0.0, 0.0], diverged=(0, 1))
    late = _row("ce_a0.75", CE, [0.0, 0.0], diverged=(0, 1))
    late["diverged_at"] = [22, 24]
    fl = _row("fl_g2_a0.25", FL, [3.0, 4.0], curve=[(500, 1, 0, 2), (1000, 3.5, 0.7, 2)])
    # one seed NaN, the other finished: the line is the finished seed's, and says so
    half = _row("fl_g0.5_a0.50", FL, [0.0, 9.9], curve=[(500, 1.6, 0, 1), (1000, 9.9, 0, 1)])
    half["diverged_at"] = [40, None]
    assert best_of([early, late, fl], (CE,))["name"] == "ce_a0.75"
    labels = []
    real_savefig = plt.Figure.savefig

    def capture(fig, *a, **k):
        labels.extend(fig.axes[0].get_legend_handles_labels()[1])
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = capture
    try:
        plot_curves([early, late, fl, half], str(tmp_path / "c.png"), "t",
                    ["ce_a0.75", "fl_g2_a0.25"])
    finally:
        plt.Figure.savefig = real_savefig
    assert labels == ["ce_a0.25: NaN at iteration 3, 3", "ce_a0.75: NaN at iteration 22, 24",
                      "fl_g2_a0.25 (highlighted)",
                      "fl_g0.5_a0.50 (finished seeds only; NaN at iteration 40)"]
    assert (tmp_path / "c.png").stat().st_size > 0
