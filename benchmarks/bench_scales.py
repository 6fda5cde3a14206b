#!/usr/bin/env python
"""The paper's Table 1e speed measure: inference time per image against input scale (shorter
side 400/500/600/700/800 px, max 667..1333) for R-50-FPN and R-101-FPN, FocalRetinaNet against
Detectron2's RetinaNet with the same weights, in one process (interleaved medians), from the
configs in ``configs/paper/table1e/``. Scores are "sparse" (~1% of anchors above the 0.05
threshold, like a trained model; see ``_model_setup.py``); the image is 4:3 (COCO's most common
shape). The paper's M40 GPU times are listed beside ours for reference; AP needs COCO and is not
measured here. Writes JSON and a plot (``--output``).

Usage: python -m benchmarks.bench_scales [--device cpu|cuda] [--repeats 3] [--output DIR]
"""
import argparse
import json
import platform

import torch

from benchmarks._common import interleaved, write_result
from benchmarks._model_setup import build_pair, detect, make_batch, set_scores
from focal_det import cli

SCALES = (400, 500, 600, 700, 800)
PAPER_MS = {50: (64, 72, 98, 121, 153), 101: (81, 90, 122, 154, 198)}  # M40, test-dev
PAPER_AP = {50: (30.5, 32.5, 34.3, 35.1, 35.7), 101: (31.9, 34.4, 36.0, 37.1, 37.8)}


def measure(device, depth, scale, repeats):
    config = f"configs/paper/table1e/retinanet_R{depth}_FPN_{scale}.yaml"
    cfg = cli.load_yaml_config(config)
    h, w = scale, min(round(scale * 4 / 3), cfg.INPUT.MAX_SIZE_TEST)
    ours, theirs = build_pair(device, config)
    image = make_batch(1, h, w, device, seed=1)[0]["image"]
    set_scores([theirs, ours], image, "sparse")
    batch = [{"image": image}]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = interleaved({"focal_det": lambda: detect(ours, batch),
                         "detectron2": lambda: detect(theirs, batch)}, repeats, sync=sync)
    return {"depth": depth, "scale": scale, "image": [h, w], "config": config,
            "ms": {k: v["median_s"] * 1000 for k, v in times.items()},
            "detections": len(detect(ours, batch)), "timing": times,
            "paper_ms_m40": PAPER_MS[depth][SCALES.index(scale)],
            "paper_ap_test_dev": PAPER_AP[depth][SCALES.index(scale)]}


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for depth, marker in ((50, "o"), (101, "s")):
        r = [x for x in rows if x["depth"] == depth]
        for who, style in (("focal_det", "-"), ("detectron2", "--")):
            ax.plot([x["scale"] for x in r], [x["ms"][who] for x in r], style, marker=marker,
                    label=f"R-{depth} {who}")
    ax.set(xlabel="shorter side (px)", ylabel="inference ms / image (median)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--depths", type=int, nargs="+", default=[50, 101], choices=[50, 101])
    cli.add_output(p, what="bench_scales_<device>.{json,png}")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    rows = [measure(args.device, d, s, args.repeats) for d in args.depths for s in SCALES]
    for r in rows:
        r["ours_over_detectron2"] = r["ms"]["focal_det"] / r["ms"]["detectron2"]
    out = {"torch": torch.__version__, "device": args.device,
           "machine": platform.processor() or platform.machine(),
           "cpu_threads": torch.get_num_threads(),
           "command": cli.regenerate_command(["-m", "benchmarks.bench_scales"]), "rows": rows}
    print(json.dumps(out, indent=2))
    if args.output:
        write_result(args.output, f"bench_scales_{args.device}.json", out)
        plot(rows, f"{args.output}/bench_scales_{args.device}.png",
             f"Table 1e speed on {args.device} ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
