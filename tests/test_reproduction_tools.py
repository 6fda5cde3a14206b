"""tools/ablate.py and tools/loss_distribution.py at a 2-iteration budget on a tiny dataset
made here: every run goes through train_net.py, the table, JSON and pictures are written,
finished runs are not repeated, a NaN run is recorded as diverged."""
import json
import os

import pytest
import torch

from focal_det.data import ensure_generated
from tests.common import REPO, TINY_SHAPES, load_script, tiny_run_opts

ablate = load_script("tools/ablate.py")
loss_distribution = load_script("tools/loss_distribution.py")
from focal_det.analysis import ablation, loss_distribution as ld  # noqa: E402

FAST = tiny_run_opts(channels=32)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    folder = ensure_generated(TINY_SHAPES, root=str(tmp_path_factory.mktemp("data")))
    return ["--register-coco", "tiny_train", os.path.join(folder, "train.json"), folder,
            "--register-coco", "tiny_val", os.path.join(folder, "val.json"), folder,
            "--train", "tiny_train", "--test", "tiny_val"]


@pytest.mark.slow
def test_ablate_runs_grid_writes_table_and_does_not_repeat(coco, tmp_path):
    out = tmp_path / "abl"
    argv = [*coco, "--grid", "paper", "--only", "fl_g2_a0.25", "ce_noprior",
            "--iters", "2", "--seeds", "0", "1", "--output", str(out), *FAST]
    results = ablate.main(argv)
    assert [(r["name"], r["seed"]) for r in results] == [
        ("fl_g2_a0.25", 0), ("ce_noprior", 0), ("fl_g2_a0.25", 1), ("ce_noprior", 1)]
    assert all(r["status"] == "ok" for r in results)
    run = out / "fl_g2_a0.25" / "seed1"
    assert (run / "model_final.pth").exists() and not list(run.glob("model_0*.pth"))
    cfg_text = (run / "config.yaml").read_text()
    assert "NAME: FocalLoss" in cfg_text and "SEED: 1" in cfg_text and "MAX_ITER: 2" in cfg_text
    assert "BIAS_INIT: Zero" in (out / "ce_noprior" / "seed0" / "config.yaml").read_text()
    table = (out / "ablation.md").read_text()
    assert "| fl_g2_a0.25 | FocalLoss | 2 | 0.25 |" in table and "| ce_noprior |" in table
    assert "python tools/ablate.py" in table
    data = json.loads((out / "ablation.json").read_text())
    assert {r["name"] for r in data["rows"]} == {"fl_g2_a0.25", "ce_noprior"}
    assert all(len(r["AP_per_seed"]) == 2 for r in data["rows"])
    assert (out / "ablation.png").stat().st_size > 10_000
    # a second call finds every run finished: nothing is trained again
    stamp = (run / "result.json").stat().st_mtime_ns
    log_size = (run / "run.log").stat().st_size
    again = ablate.main(argv)
    assert again == results
    assert (run / "result.json").stat().st_mtime_ns == stamp
    assert (run / "run.log").stat().st_size == log_size


@pytest.mark.slow
def test_ablate_records_divergence_and_goes_on(coco, tmp_path):
    out = tmp_path / "div"
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps([
        {"name": "exploding", "loss": "CrossEntropy", "bias_init": "Zero",
         "extra": ["SOLVER.BASE_LR", "1e12", "SOLVER.CLIP_GRADIENTS.ENABLED", "False"]},
        {"name": "fine", "loss": "FocalLoss", "gamma": 2, "alpha": 0.25},
    ]))
    results = ablate.main([*coco, "--grid", str(grid), "--iters", "4", "--seeds", "0",
                           "--output", str(out), *FAST])
    status = {r["name"]: r for r in results}
    assert status["exploding"]["status"] == "diverged"
    assert 0 <= status["exploding"]["diverged_at"] < 4
    assert status["fine"]["status"] == "ok"
    assert "| exploding |" in (out / "ablation.md").read_text()
    assert "seed 0" in (out / "ablation.md").read_text()  # the diverged column names the seed


def test_ablate_rejects_bad_arguments(coco, tmp_path, capsys):
    with pytest.raises(SystemExit, match="not in grid"):
        ablate.main(["--only", "nope", "--output", str(tmp_path)])
    # a list flag just before the overrides ends at the first config key: it neither reads the
    # keys as run names (--only) nor fails on them (--seeds)
    runs = ablate.main(["--output", str(tmp_path), "--dry-run", "--only", "fl_g2_a0.25",
                        "--seeds", "3", "SOLVER.CHECKPOINT_PERIOD", "500"])
    assert [(r["name"], r["seed"]) for r in runs] == [("fl_g2_a0.25", 3)]
    assert "SOLVER.CHECKPOINT_PERIOD 500" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not a built-in grid"):
        ablate.main(["--grid", "missing.json", "--output", str(tmp_path)])


def test_budget_shrinks_the_schedule():
    opts = dict(zip(*[iter(ablation.budget_opts(900))] * 2))
    assert opts["SOLVER.MAX_ITER"] == "900" and opts["SOLVER.STEPS"] == "(600, 800)"
    assert opts["TEST.EVAL_PERIOD"] == "900"
    assert dict(zip(*[iter(ablation.budget_opts(2))] * 2))["SOLVER.STEPS"] == "(1,)"


@pytest.mark.slow
def test_loss_distribution_on_a_trained_model(coco, tmp_path):
    out = tmp_path / "abl"
    ablate.main([*coco, "--only", "fl_g2_a0.25", "--iters", "2", "--seeds", "0",
                 "--output", str(out), *FAST])
    weights = out / "fl_g2_a0.25" / "seed0" / "model_final.pth"
    dist = tmp_path / "dist"
    config = os.path.join(REPO, "configs", "builtin", "retinanet_R18_shapes.yaml")
    result = loss_distribution.main(
        ["--config-file", config, "--weights", str(weights), "--register-coco", "tiny_val2",
         *coco[6:8], "--dataset", "tiny_val2", "--num-images", "3", "--gammas", "0", "2",
         "--output", str(dist), *FAST])
    assert result["counts"]["images"] == 3 and result["counts"]["foreground_anchors"] > 0
    for name in ("positive", "negative"):
        assert result[name]["count"] > 0
        for curve in result[name]["gammas"].values():
            c = torch.tensor(curve["cumulative_normalized_loss"])
            assert (c[1:] >= c[:-1] - 1e-12).all() and abs(c[-1].item() - 1) < 1e-9
    assert (dist / "loss_distribution.png").stat().st_size > 10_000
    assert "| negative | 2 |" in (dist / "loss_distribution.md").read_text()
    json.loads((dist / "loss_distribution.json").read_text())


def test_loss_distribution_concentrates_negative_loss_as_gamma_grows():
    """The paper's Figure 4 effect on synthetic logits: mostly easy negatives, a few hard."""
    g = torch.Generator().manual_seed(0)
    neg = torch.cat([torch.randn(100_000, generator=g) - 6, torch.randn(500, generator=g)])
    pos = torch.randn(2_000, generator=g) + 2
    result = ld.analyze(pos, neg, [0, 1, 2, 5])
    top1 = [result["negative"]["gammas"][k]["hardest_share"]["0.01"] for k in "0 1 2 5".split()]
    assert top1 == sorted(top1) and top1[0] < 0.6 and top1[-1] > 0.95
    half = [result["negative"]["gammas"][k]["fraction_carrying_half"] for k in "0 1 2 5".split()]
    assert half == sorted(half, reverse=True)
    cdf = ld.normalized_cdf(torch.tensor([1.0, 3.0, 0.0, 4.0]))
    assert torch.allclose(cdf, torch.tensor([0.0, 0.125, 0.5, 1.0], dtype=torch.float64))
    assert ld.hardest_share(cdf, 0.25) == pytest.approx(0.5)
    assert ld.half_loss_fraction(cdf) == pytest.approx(0.5)


def test_register_coco_errors_name_the_flag_and_file(coco, tmp_path):
    from focal_det.data.register import register_coco_datasets

    with pytest.raises(FileNotFoundError, match="--register-coco x: annotation file .*nope.json"):
        register_coco_datasets([["x", str(tmp_path / "nope.json"), str(tmp_path)]])
    with pytest.raises(FileNotFoundError, match="--register-coco x: image folder"):
        register_coco_datasets([["x", coco[2], str(tmp_path / "missing")]])
    register_coco_datasets([["twice", coco[2], coco[3]]])
    register_coco_datasets([["twice", coco[2], coco[3]]])  # the same again: fine
    other = tmp_path / "other.json"
    other.write_text(open(coco[2]).read())
    with pytest.raises(ValueError, match="--register-coco twice: a dataset with this name"):
        register_coco_datasets([["twice", str(other), coco[3]]])
