"""One reader of the JSON-lines files a run appends to (``metrics.json``, ``grad_stats.jsonl``):
a line cut by a kill is passed over, a row a resumed run appended to that line is kept, and
every user of the files reads them through it."""
import json

from focal_det.analysis import ablation, divergence, grad_stats
from focal_det.engine.grad_stats import FILENAME
from focal_det.utils.metrics import read_json_lines, read_metrics
from focal_det.utils.vis import plot_training_curves

TRAIN = [{"iteration": 19, "loss_cls": 3.0, "loss_box_reg": 1.0, "total_loss": 4.0, "lr": 0.1},
         {"iteration": 39, "loss_cls": 2.0, "loss_box_reg": 0.8, "total_loss": 2.8, "lr": 0.1}]
EVAL = {"iteration": 39, "bbox/AP": 12.5, "bbox/AP50": 30.0, "bbox/AP75": 10.0,
        "bbox/APs": 1.0, "bbox/APm": 2.0, "bbox/APl": 3.0}
RESUMED = {"iteration": 59, "loss_cls": 1.5, "loss_box_reg": 0.5, "total_loss": 2.0, "lr": 0.01}


def _lines(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_a_cut_last_line_is_passed_over(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(_lines(TRAIN + [EVAL]) + json.dumps(RESUMED)[:25])
    assert read_json_lines(str(path)) == TRAIN + [EVAL]
    assert read_metrics(str(tmp_path)) == TRAIN + [EVAL]
    # A whole last row without its newline (killed between the row and "\n") counts.
    path.write_text(_lines(TRAIN) + json.dumps(EVAL))
    assert read_metrics(str(tmp_path)) == TRAIN + [EVAL]


def test_a_row_appended_to_a_cut_line_is_kept(tmp_path):
    # Killed mid-write, then resumed: the first new row lands on the cut line.
    cut = json.dumps({"iteration": 49, "norms": {"a": 1.0, "b": 2.0}})[:30]
    nested = {"iteration": 59, "clip": {"enabled": True}, "norms": {"a": 1.0}}
    path = tmp_path / "rows.jsonl"
    path.write_text(_lines(TRAIN) + cut + _lines([nested, RESUMED]) + "\n\n")
    assert read_json_lines(str(path)) == TRAIN + [nested, RESUMED]
    path.write_text('{"iteration": 3, "loss_c' + "not json\n" + "[1, 2]\n" + _lines(TRAIN))
    assert read_json_lines(str(path)) == TRAIN  # nothing that is not a whole object
    assert read_json_lines(str(tmp_path / "absent.json")) == []


def test_every_user_reads_a_cut_file(tmp_path):
    cut = json.dumps(RESUMED)[:20]
    (tmp_path / "metrics.json").write_text(_lines(TRAIN + [EVAL]) + cut + _lines([RESUMED])
                                           + cut)
    final = ablation.read_final_metrics(str(tmp_path), eval_period=40)
    assert final["AP"] == 12.5 and final["ap_curve"] == [[40, 12.5]]
    assert final["final_loss_cls"] == 1.5
    assert divergence.loss_curve(str(tmp_path)) == [[19, 3.0], [39, 2.0], [59, 1.5]]
    assert (tmp_path / "training_curves.png").exists() is False
    plot_training_curves(str(tmp_path))
    assert (tmp_path / "training_curves.png").stat().st_size > 0

    row = {"iteration": 0, "clip": {"enabled": False, "type": "norm", "value": 1.0},
           "fired": 1, "total_norm": 2.0, "norms": {"head.cls_score.weight": 2.0}}
    again = {**row, "total_norm": 3.0}
    (tmp_path / FILENAME).write_text(_lines([row]) + json.dumps(row)[:15] + _lines([again])
                                     + json.dumps(row)[:15])
    assert grad_stats.read_rows(str(tmp_path)) == [again]  # resumed: the last row counts
