"""The paper's Table 1c and 1e as configs: every leaf loads on the paper's base, with the anchors
per location (scales per octave x aspect ratios) and the input sizes its row names, and every
row of the tables has its config."""
import glob
import os
import re

import pytest
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import build_anchor_generator

from focal_det import cli
from tests.common import CONFIGS

TABLE_1C = {(1, 1), (2, 1), (3, 1), (1, 3), (2, 3), (3, 3), (4, 3)}
TABLE_1E = {(d, s) for d in (50, 101) for s in (400, 500, 600, 700, 800)}
MAX_SIZE = {400: 667, 500: 833, 600: 1000, 700: 1167, 800: 1333}


def _anchors_per_location(cfg):
    shapes = [ShapeSpec(channels=256, stride=s) for s in (8, 16, 32, 64, 128)]
    return build_anchor_generator(cfg, shapes).num_cell_anchors


def test_table_1c_configs_have_their_anchors():
    found = set()
    for path in glob.glob(os.path.join(CONFIGS, "paper", "table1c", "*.yaml")):
        s, r = map(int, re.search(r"anchors_(\d)x(\d)", path).groups())
        cfg = cli.load_yaml_config(path)
        assert _anchors_per_location(cfg) == [s * r] * 5, path
        sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
        for base, level in zip((32, 64, 128, 256, 512), sizes):  # 2^(i/s) of the base
            assert level == pytest.approx([base * 2 ** (i / s) for i in range(s)])
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (600, 1000)
        assert cfg.MODEL.RESNETS.DEPTH == 50
        found.add((s, r))
    assert found == TABLE_1C


def test_table_1e_configs_have_their_depth_and_scale():
    found = set()
    for path in glob.glob(os.path.join(CONFIGS, "paper", "table1e", "*.yaml")):
        d, s = map(int, re.search(r"R(\d+)_FPN_(\d+)", path).groups())
        cfg = cli.load_yaml_config(path)
        assert cfg.MODEL.RESNETS.DEPTH == d
        assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (s,) and cfg.INPUT.MIN_SIZE_TEST == s
        assert cfg.INPUT.MAX_SIZE_TRAIN == cfg.INPUT.MAX_SIZE_TEST == MAX_SIZE[s]
        assert _anchors_per_location(cfg) == [9] * 5  # the paper's default anchors
        assert f"R-{d}.pkl" in cfg.MODEL.WEIGHTS  # its ImageNet weights
        found.add((d, s))
    assert found == TABLE_1E


def test_table_1a_1b_and_3_configs_set_their_loss():
    found = {}
    for path in glob.glob(os.path.join(CONFIGS, "paper", "table1[ab]", "*.yaml")) + \
            glob.glob(os.path.join(CONFIGS, "paper", "table3", "*.yaml")):
        cfg = cli.load_yaml_config(path)
        c = cfg.MODEL.FOCAL_DET.CLS_LOSS
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.MODEL.RESNETS.DEPTH) == (600, 50)
        key = os.path.basename(os.path.dirname(path))
        found.setdefault(key, set()).add((c.NAME, c.GAMMA if c.NAME != "BalancedCrossEntropy"
                                          else None, c.ALPHA, c.BETA if "Star" in c.NAME
                                          else None))
    assert {a for _, _, a, _ in found["table1a"]} == {.1, .25, .5, .75, .9, .99, .999}
    assert {(g, a) for _, g, a, _ in found["table1b"]} == {
        (0, .75), (0.1, .75), (0.2, .75), (0.5, .5), (1, .25), (2, .25), (5, .25)}
    assert {(n, g, b) for n, g, _, b in found["table3"]} == {("FocalLossStar", 2, 1),
                                                             ("FocalLossStar", 4, 0)}
