"""cli.parse_args: .yaml overrides start at the first config key, so a list flag before them
(--seeds, --only) ends there."""
import argparse

import pytest

from focal_det import cli


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="+", default=None)
    p.add_argument("--grid", default="paper")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    return p


def test_a_list_flag_ends_at_the_first_config_key():
    args = cli.parse_args(_parser(), ["--seeds", "0", "1", "SOLVER.BASE_LR", "0.01",
                                      "MODEL.FOCAL_DET.CLS_LOSS.NAME", "FocalLoss"])
    assert args.seeds == [0, 1]
    assert args.opts == ["SOLVER.BASE_LR", "0.01", "MODEL.FOCAL_DET.CLS_LOSS.NAME", "FocalLoss"]
    args = cli.parse_args(_parser(), ["--only", "fl", "efl_s4", "SOLVER.CHECKPOINT_PERIOD", "500"])
    assert args.only == ["fl", "efl_s4"] and args.opts == ["SOLVER.CHECKPOINT_PERIOD", "500"]


@pytest.mark.parametrize("argv", [
    ["--grid", "grids/MODEL.json", "--seeds", "2"],   # a file name: MODEL.json is no key
    ["--grid", "MODEL.json", "--seeds", "2"],        # nor is a file in the working folder
    ["--grid", "SOLVER", "--seeds", "2"],             # a section alone is no key
    ["--only", "fl_g2_a0.25", "ce_a0.75"],            # run names with dots
])
def test_values_that_are_not_config_keys_stay_with_their_flag(argv):
    assert cli.parse_args(_parser(), argv) == _parser().parse_args(argv)


def test_overrides_in_the_usual_place_parse_as_before():
    argv = ["--seeds", "1", "--grid", "gamma", "SOLVER.MAX_ITER", "10"]
    assert cli.parse_args(_parser(), argv) == _parser().parse_args(argv)
    with pytest.raises(SystemExit):  # a bad value still fails as argparse fails
        cli.parse_args(_parser(), ["--seeds", "x", "SOLVER.MAX_ITER", "10"])
