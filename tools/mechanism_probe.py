#!/usr/bin/env python
"""Issue 37 (a), (b) and the free checks, docs/REPRODUCTION.md Section 7: λmax at
initialization of α-CE α .75 / .25, FL γ .5 / 2 on the same batches; λmax along α-CE α .75's
first iterations against 2(1 + β)/η_t with the gradient cosines; the P3-P7 channel statistics
and the input normalization against the pretraining's. Each piece is written to its own JSON
in --output as it finishes and skipped when it is there (rerun to resume).

    OMP_NUM_THREADS=1 python tools/mechanism_probe.py --output output/mechanism/probe \\
        MODEL.WEIGHTS output/pretrain_R18_glyphs/backbone.pth
"""
import argparse
import json
import os

from focal_det import cli
from focal_det.analysis import mechanism_probe as M
from focal_det.stability import probe
from focal_det.utils.files import atomic_write_text

CONFIG = os.path.join("configs", "builtin", "retinanet_R18_letters_paper.yaml")
K = "MODEL.FOCAL_DET.CLS_LOSS."
LOSSES = {  # name -> overrides (the paper's α per γ)
    "ce_a0.75": [K + "NAME", "BalancedCrossEntropy", K + "ALPHA", "0.75"],
    "ce_a0.25": [K + "NAME", "BalancedCrossEntropy", K + "ALPHA", "0.25"],
    "fl_g0.5_a0.50": [K + "NAME", "FocalLoss", K + "GAMMA", "0.5", K + "ALPHA", "0.5"],
    "fl_g2_a0.25": [K + "NAME", "FocalLoss", K + "GAMMA", "2.0", K + "ALPHA", "0.25"],
}
GROUPS_FOR = ("ce_a0.75", "fl_g2_a0.25")


def _model(cfg):
    import torch
    from focal_det.checkpoint import FocalCheckpointer
    from focal_det.engine.trainer import Trainer
    torch.manual_seed(cfg.SEED)
    model = Trainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        FocalCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=CONFIG)
    p.add_argument("--output", required=True)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--lanczos-iters", type=int, default=10)
    p.add_argument("--points", type=int, nargs="+", default=[0, 5, 10, 15, 20])
    p.add_argument("--seed", type=int, default=0, help="SEED of the trajectory's run")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = cli.parse_args(p, argv)
    os.makedirs(args.output, exist_ok=True)
    from focal_det.data import prepare_datasets
    from focal_det.engine.trainer import Trainer

    def cfg_of(name, seed=None):
        extra = ["SEED", str(seed)] if seed is not None else []
        cfg = cli.load_yaml_config(args.config_file, args.opts + LOSSES[name] + extra,
                                   device="cpu")
        prepare_datasets(list(cfg.DATASETS.TRAIN))
        return cfg

    def piece(stem, fn):
        path = os.path.join(args.output, stem + ".json")
        if os.path.exists(path):
            print(f"[mechanism_probe] {stem}: done ({path})")
            return
        result = fn()
        atomic_write_text(path, json.dumps({"command": cli.regenerate_command(
            "tools/mechanism_probe.py", argv), **result}, indent=1, default=str))
        print(f"[mechanism_probe] {stem}: written to {path}", flush=True)

    base = cfg_of("ce_a0.75")
    probes = probe.fixed_batches(Trainer.build_train_loader(base), args.batches)

    def checks():
        model = _model(base)
        return {"normalization": M.normalization_check(base, base.MODEL.WEIGHTS),
                "channels": M.channel_stats(model, probes[0])}

    def init():
        cfgs = {n: cfg_of(n) for n in LOSSES}
        models = {n: _model(c) for n, c in cfgs.items()}
        return {"losses": M.at_init(models, cfgs, probes, groups_for=GROUPS_FOR,
                                    iters=args.lanczos_iters),
                "batches": args.batches, "lanczos_iters": args.lanczos_iters}

    def traj():
        cfg = cfg_of("ce_a0.75", seed=args.seed)
        stream = probe.fixed_batches(Trainer.build_train_loader(cfg), max(args.points) + 1)
        return M.trajectory(_model(cfg), cfg, stream, probes, points=args.points,
                            iters=args.lanczos_iters)

    piece("checks", checks)
    piece("init", init)
    piece(f"trajectory_ce_a0.75_seed{args.seed}", traj)


if __name__ == "__main__":
    cli.run_tool(main, "mechanism_probe.py")
