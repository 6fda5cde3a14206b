"""focal_det.analysis.efl_g: EFL's g_j against the image counts in numbers (Section 8)."""
import math

import numpy as np
import pytest

from focal_det.analysis import efl_g


def test_average_ranks_share_ties():
    assert efl_g.average_ranks([10, 1, 1, 5]).tolist() == [3.0, 0.5, 0.5, 2.0]


def test_spearman_is_one_for_any_rising_relation_and_nan_when_constant():
    counts = [1, 2, 2, 10, 100, 1000]
    assert efl_g.spearman(np.log(counts), counts) == pytest.approx(1.0)
    assert efl_g.spearman([-c for c in counts], counts) == pytest.approx(-1.0)
    assert math.isnan(efl_g.spearman([0.5] * 6, counts))
    rng = np.random.default_rng(0)  # against the definition with distinct values
    a, b = rng.random(20), rng.random(20)
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    assert efl_g.spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])


def test_g_summary_reads_the_last_row_per_group():
    counts = [1, 5, 50, 80, 500, 1000]
    freq = ["r", "r", "c", "c", "f", "f"]
    rows = [{"iteration": 19, "pos_neg": [1.0] * 6},
            {"iteration": 39, "pos_neg": [0.6, 0.7, 0.8, 0.85, 0.99, 1.0]}]
    s = efl_g.g_summary(rows, counts, freq)
    assert s["iteration"] == 40 and s["means_rise"]
    assert s["groups"]["r"] == {"classes": 2, "mean": pytest.approx(0.65), "min": 0.6, "max": 0.7}
    assert s["lowest"] == {"class": 0, "g": 0.6, "image_count": 1, "frequency": "r"}
    assert s["spearman"] == pytest.approx(1.0)
    rows[-1]["pos_neg"] = [0.9, 0.9, 0.5, 0.5, 0.95, 0.95]  # common below rare: no rise
    s = efl_g.g_summary(rows, counts, freq)
    assert not s["means_rise"] and s["lowest"]["frequency"] == "c"
    assert "| no |" in efl_g.markdown({"run": s})
    with pytest.raises(ValueError, match="6 classes, the metadata 5"):
        efl_g.g_summary(rows, counts[:5], freq[:5])
