"""Issue 28's diagnosis: the grid (one change each on the faithful recipe as Section 6 ran it),
and the report on synthetic runs (finite or NaN, final loss, class-conv gradient, the width
test, which gradient group grows first)."""
import json
import math
import os

import pytest

from focal_det import cli
from focal_det.analysis import diagnosis as D
from focal_det.analysis.grids import DIAGNOSIS_BASE, GRIDS
from tests.common import CONFIGS, load_script

FAITHFUL = os.path.join(CONFIGS, "builtin", "retinanet_R18_letters_paper_6it.yaml")


def _opts(entry):
    return dict(zip(*[iter(entry.opts())] * 2))  # later keys win, as merge_from_list


def test_diagnosis_grid_changes_exactly_one_thing_each():
    grid = {e.name: e for e in GRIDS["letters_paper_diagnosis"]}
    base = _opts(grid["ce_a0.75_base"])
    assert base["MODEL.FOCAL_DET.CLS_LOSS.NAME"] == "BalancedCrossEntropy"
    assert base["MODEL.FOCAL_DET.CLS_LOSS.ALPHA"] == "0.75"
    assert base["MODEL.FOCAL_DET.HEAD.BIAS_INIT"] == "PriorProb"
    assert base["SOLVER.WARMUP_ITERS"] == "6" and base["SOLVER.STEPS"] == "()"
    assert int(base["MODEL.FOCAL_DET.GRAD_STATS_ITERS"]) >= 10_000  # every iteration
    # the base is the faithful config as Section 6 ran it (pinned: later edits do not move it)
    cfg = cli.load_yaml_config(FAITHFUL, list(DIAGNOSIS_BASE))
    ran = cli.load_yaml_config(FAITHFUL, ["SOLVER.STEPS", "()",
                                          "MODEL.FOCAL_DET.GRAD_STATS_ITERS", "1000000"])
    assert cfg.dump() == ran.dump() or _differs_only_where_the_config_moved(cfg, ran)
    expected = {
        "ce_a0.75_warmup500": {"SOLVER.WARMUP_ITERS": "500"},
        "ce_a0.75_bias2x": {"SOLVER.BIAS_LR_FACTOR": "2.0", "SOLVER.WEIGHT_DECAY_BIAS": "0.0"},
        "ce_a0.75_width256": {"MODEL.FPN.OUT_CHANNELS": "256"},
        "ce_a0.75_init_wp": {"MODEL.FOCAL_DET.HEAD.WEIGHT_INIT": "width_preserving"},
        "ce_a0.75_freeze5": {"MODEL.BACKBONE.FREEZE_AT": "5"},
        "ce_a0.75_lowq04": {"MODEL.FOCAL_DET.LOW_QUALITY_MATCH_MIN_IOU": "0.4"},
    }
    assert set(grid) == set(expected) | {"ce_a0.75_base"}
    for name, change in expected.items():
        opts = _opts(grid[name])
        assert {k: v for k, v in opts.items() if base.get(k) != v} == change, name
        cli.load_yaml_config(FAITHFUL, grid[name].opts())  # every key exists


def _differs_only_where_the_config_moved(pinned, current):
    """After the lead corrects the faithful config, the pinned base differs from it only in
    the keys the diagnosis pins."""
    pinned_keys = set(DIAGNOSIS_BASE[::2])

    def flat(node, prefix=""):
        for k, v in node.items():
            if hasattr(v, "items"):
                yield from flat(v, prefix + k + ".")
            else:
                yield prefix + k, v

    a, b = dict(flat(pinned)), dict(flat(current))
    return all(k in pinned_keys for k in a if a[k] != b.get(k))


def _write_run(root, name, seed, status, losses, norms, diverged_at=None, ap=5.0):
    run = os.path.join(root, name, f"seed{seed}")
    os.makedirs(run)
    with open(os.path.join(run, "metrics.json"), "w") as f:
        for it, v in losses:
            f.write(json.dumps({"iteration": it, "loss_cls": v}) + "\n")
    with open(os.path.join(run, "grad_stats.jsonl"), "w") as f:
        for it, row in enumerate(norms):
            f.write(json.dumps({"iteration": it, "clip": {}, "fired": 0, "total_norm": 1.0,
                                "norms": row}) + "\n")
    result = {"name": name, "seed": seed, "status": status, "AP": ap if status == "ok" else 0.0}
    if diverged_at is not None:
        result["diverged_at"] = diverged_at
    with open(os.path.join(run, "result.json"), "w") as f:
        json.dump(result, f)


def _norms(it, cls_conv, grow_from=None, group="class conv"):
    """One iteration's per-tensor norms: every group 1.0 (class conv ``cls_conv``), and from
    ``grow_from`` on, ``group`` growing 3x an iteration, the others following one later."""
    row = {"backbone.bottom_up.res3.0.conv1.weight": 1.0, "backbone.fpn_lateral3.weight": 1.0,
           "backbone.top_block.p6.weight": 1.0, "head.cls_subnet.0.weight": 1.0,
           "head.cls_score.weight": cls_conv, "head.cls_score.bias": 0.5,
           "head.bbox_subnet.0.weight": 1.0, "head.bbox_pred.weight": 1.0}
    if grow_from is not None and it >= grow_from:
        k = it - grow_from
        for name in row:
            own = D.tensor_group(name) == group
            row[name] *= 3.0 ** (k if own else max(0, k - 1))
    return row


@pytest.fixture
def runs(tmp_path):
    root = str(tmp_path / "diagnosis")
    for seed in (0, 1):
        # base: the class conv's gradient grows from iteration 20, NaN at 31
        _write_run(root, "ce_a0.75_base", seed, "diverged",
                   [(19, 0.9), (39, math.nan)] if seed else [(19, 0.9)],
                   [_norms(i, 0.04, 20) for i in range(31)], diverged_at=31)
        # width 256 and the width-preserving init: same gradient, loss within 5% (seed 0),
        # gradient 2x (seed 1)
        _write_run(root, "ce_a0.75_width256", seed, "ok",
                   [(19, 1.0), (39, 0.8), (699, 0.3)], [_norms(i, 1.0) for i in range(700)])
        _write_run(root, "ce_a0.75_init_wp", seed, "ok",
                   [(19, 1.04), (39, 0.78), (699, 0.31)],
                   [_norms(i, 1.05 if seed == 0 else 2.0) for i in range(700)])
    return root


def test_growth_names_the_group_that_grows_first():
    rows = [{"iteration": i, "norms": _norms(i, 0.04, 20, group="FPN")} for i in range(40)]
    order = D.growth_order(rows)
    assert order[0]["group"] == "FPN" and order[0]["grows_at"] == 23  # 3^3 = 27 >= 10
    assert order[0]["at_100x"] == 25  # 3^5 = 243
    assert {g["grows_at"] for g in order[1:]} == {24}
    # a non-finite norm is growth
    rows = [{"iteration": i, "norms": _norms(i, 0.04)} for i in range(12)]
    rows[11]["norms"]["head.bbox_pred.weight"] = math.inf
    assert D.growth_order(rows)[0]["group"] == "box branch"
    assert D.growth_order(rows)[0]["grows_at"] == 11
    assert D.tensor_group("backbone.bottom_up.stem.conv1.weight") == "backbone"
    assert D.tensor_group("pixel_mean") is None


def test_report_on_synthetic_runs(runs, tmp_path):
    grid = GRIDS["letters_paper_diagnosis"]
    s = D.summarize(runs, grid, [0, 1], window=300)
    by = {(r["name"], r["seed"]): r for r in s["runs"]}
    base = by[("ce_a0.75_base", 0)]
    assert base["status"] == "diverged" and D.ended(base) == "NaN at iteration 31"
    assert base["final_loss_cls"] == 0.9 and base["final_loss_iteration"] == 19
    assert base["class_conv_grad"]["first"] == 0.04 and base["class_conv_grad"]["n"] == 31
    assert base["growth"][0]["group"] == "class conv" and base["growth"][0]["grows_at"] == 23
    wide = by[("ce_a0.75_width256", 0)]
    assert D.ended(wide) == "finite to 700" and wide["growth"] is None
    assert wide["class_conv_grad"]["n"] == 300  # the window
    assert by[("ce_a0.75_freeze5", 1)]["status"] == "not run"
    w = {c["seed"]: c for c in s["width_check"]}
    assert w[0]["same"] and abs(w[0]["grad_ratio"] - 1.05) < 1e-9 and w[0]["loss_points"] == 2
    assert not w[1]["same"] and w[1]["grad_ratio"] == 2.0
    table = D.markdown(s)
    assert "NaN at iteration 31" in table and "finite to 700" in table and "not run" in table
    assert "**class conv** (23 / 25)" in table
    assert "| 0 | 1.05 |" in table and "| yes |" in table and "| no |" in table

    # the tool: report, JSON and chart; seeds found from the folders
    tool = load_script("tools/paper_diagnosis.py")
    out = str(tmp_path / "report")
    tool.main(["report", "--runs", runs, "--output", out])
    for ext in ("md", "json", "png"):
        assert os.path.exists(os.path.join(out, f"diagnosis.{ext}"))
    with open(os.path.join(out, "diagnosis.json")) as f:
        data = json.load(f)
    assert data["seeds"] == [0, 1] and "paper_diagnosis.py report" in data["command"]
    with pytest.raises(SystemExit, match="does not exist"):
        tool.main(["report", "--runs", str(tmp_path / "nothing")])


def test_ablate_config_warmup_keeps_the_configs_warmup(tmp_path, capsys):
    tool = load_script("tools/ablate.py")
    tool.main(["--config-file", FAITHFUL, "--grid", "letters_paper", "--only", "ce_a0.75",
               "--iters", "700", "--warmup", "config", "--seeds", "0",
               "--output", str(tmp_path), "--dry-run"])
    line = [x for x in capsys.readouterr().out.splitlines() if "focal_det.engine" in x][0]
    assert "WARMUP_ITERS" not in line  # the config's own: 6 now, Detectron's 500 once corrected


def test_feature_rms_of_every_stage_and_the_width_preserving_towers():
    import torch
    from detectron2.modeling import build_model

    from focal_det.analysis import feature_rms as F
    from tests.common import get_tiny_cfg, random_batch

    cfg = get_tiny_cfg()  # 32 channels, 2 head convs
    batch = random_batch(num_images=2)
    out = {}
    for init in ("fixed", "width_preserving"):
        cfg.MODEL.FOCAL_DET.HEAD.WEIGHT_INIT = init
        torch.manual_seed(0)
        out[init] = F.feature_rms(build_model(cfg), batch)
    a, b = out["fixed"], out["width_preserving"]
    assert {"input", "res3", "res4", "res5", "p3", "p7", "cls_tower", "box_tower",
            "logits_std"} <= set(a)
    assert all(math.isfinite(v) for v in a.values())
    assert a["p5"] == b["p5"]  # the backbone and FPN are not the head
    # ReLU and zero biases: each of the 2 tower convs scales by sqrt(256 / 32)
    assert b["cls_tower"] / a["cls_tower"] == pytest.approx(8.0, rel=1e-4)
    assert F.mean_over_seeds([{"x": 1.0}, {"x": 3.0}]) == {"x": 2.0}
