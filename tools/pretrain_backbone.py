#!/usr/bin/env python
"""Pretrain the detector's ResNet bottom-up as a classifier and export it as MODEL.WEIGHTS.

    python tools/pretrain_backbone.py --output output/pretrain_R18        # built-in glyph set
    python tools/pretrain_backbone.py --source /data/my_images --output output/pretrain_mine
    python tools/pretrain_backbone.py --output output/pretrain_R18 --resume

The ResNet comes from --config-file's MODEL.RESNETS (default: the paper-faithful letters
config); the training flags default to the paper-faithful backbone's recipe
(focal_det.pretrain.train.Settings; make pretrain runs it). Writes OUTPUT/backbone.pth (detector
weights, checked by building that detector and loading every backbone key), OUTPUT/pretrain.json
(held-out top-1 over training) and a resumable OUTPUT/pretrain_last.pth. See focal_det.pretrain.
"""
import argparse
import json
import os

from focal_det import cli
from focal_det.pretrain import export, train
from focal_det.pretrain.folder import ImageFolderSource
from focal_det.pretrain.glyphs import GlyphClassification
from focal_det.utils.files import atomic_write_text

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "builtin", "retinanet_R18_letters_paper.yaml")


def get_parser():
    d = train.Settings()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG,
                   help="detection .yaml config whose MODEL.RESNETS is pretrained and which must "
                        "load the result (default: the paper-faithful letters config; "
                        f"{cli.YAML_ONLY})")
    p.add_argument("--source", default="glyphs",
                   help="'glyphs' (built-in generated set) or an ImageFolder directory")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="ImageFolder without train/ and val/: held-out share per class")
    p.add_argument("--no-flip", action="store_true", help="ImageFolder: no horizontal flips")
    for name in ("iters", "batch_size", "warmup_iters", "seed", "log_period", "eval_period",
                 "checkpoint_period"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "momentum", "weight_decay"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--resume", action="store_true", help="continue OUTPUT's run exactly")
    cli.add_output(p, what="checkpoints, backbone.pth and pretrain.json")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="overrides of --config-file, KEY VALUE ...")
    return p


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    if not args.output:
        raise SystemExit("--output is required")
    det_cfg = cli.load_yaml_config(args.config_file, args.opts, device="cpu")
    if args.source == "glyphs":
        source = GlyphClassification(seed=4242 + args.seed, image_size=args.image_size)
    else:
        source = ImageFolderSource(args.source, image_size=args.image_size,
                                   val_fraction=args.val_fraction, seed=args.seed,
                                   flip=not args.no_flip)
    settings = train.Settings(**{k: getattr(args, k) for k in train.Settings.__dataclass_fields__})
    print(f"[pretrain] {source.describe()}; ResNet-{det_cfg.MODEL.RESNETS.DEPTH}, "
          f"{settings.iters} iterations of {settings.batch_size}", flush=True)
    out = train.train(source, det_cfg, settings, args.output, resume=args.resume,
                      progress=lambda s: print(s, flush=True))
    report = out["report"]
    weights = os.path.join(args.output, "backbone.pth")
    export.export(out["model"], weights, report["meta"])
    report["check"] = export.check_detector_loads(det_cfg, weights)
    report["weights"] = weights
    report["command"] = cli.regenerate_command("tools/pretrain_backbone.py", argv)
    atomic_write_text(os.path.join(args.output, "pretrain.json"), json.dumps(report, indent=1))
    print(f"[pretrain] held-out top-1 {report['val_top1']:.2f}% on "
          f"{report['meta']['source'].get('num_val')} images; {weights}: the detector of "
          f"{os.path.relpath(args.config_file)} loads all {report['check']['backbone_keys']} "
          f"backbone keys ({report['check']['frozen_norms']} frozen norms)", flush=True)
    return report


if __name__ == "__main__":
    cli.run_tool(main, "pretrain_backbone.py")
