#!/usr/bin/env python
"""The paper's Table 1e speed measure: inference time per image against input scale (shorter
side 400/500/600/700/800 px, max 667..1333) for R-50-FPN and R-101-FPN, FocalRetinaNet against
Detectron2's RetinaNet with the same weights, in one process (interleaved medians), from the
configs in ``configs/paper/table1e/``. Scores are "sparse" (~1% of anchors above the 0.05
threshold, like a trained model; see ``_model_setup.py``); the image is 4:3 (COCO's most common
shape). The paper's M40 GPU times are listed beside ours for reference; AP needs COCO and is not
measured here. Writes JSON and a plot (``--output``).

Every scale and depth is measured ``--rounds`` times (default 3), each round interleaved as one
run was; the JSON keeps every round (``per_round``), each ratio ``R<depth>/<scale>`` (ours /
Detectron2's ms) as median, min and max over the rounds (``ratios``). No issue set a goal for
these ratios, so ``claims`` is empty; the plot draws the medians of the rounds.

Usage: python -m benchmarks.bench_scales [--device cpu|cuda] [--rounds 3] [--repeats 3]
       [--depths 50 101] [--scales 400 ... 800] [--output DIR]
"""
import argparse
import platform

import torch

from benchmarks._common import (add_rounds_arg, emit, environment, interleaved, markdown_ratios,
    run_rounds, spread)
from benchmarks._model_setup import build_pair, detect, make_batch, set_scores
from focal_det import cli
from focal_det.errors import FocalDetError

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


def one_round(device, depths, scales, repeats):
    """Every (depth, scale) measured once, interleaved within each; its ratios by name."""
    rows = [measure(device, d, s, repeats) for d in depths for s in scales]
    for r in rows:
        r["ours_over_detectron2"] = r["ms"]["focal_det"] / r["ms"]["detectron2"]
    return rows, {f"R{r['depth']}/{r['scale']}": r["ours_over_detectron2"] for r in rows}


def median_rows(per_round):
    """One row per (depth, scale): each contender's ms as median, min and max over the rounds
    and ``ms`` the medians (what the plot draws)."""
    out = []
    for i, first in enumerate(per_round[0]):
        rows = [rnd[i] for rnd in per_round]
        ms = {who: spread([r["ms"][who] for r in rows]) for who in first["ms"]}
        out.append({k: first[k] for k in ("depth", "scale", "image", "config", "paper_ms_m40",
                                          "paper_ap_test_dev")}
                   | {"ms_over_rounds": ms, "ms": {k: v["median"] for k, v in ms.items()}})
    return out


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats a round")
    add_rounds_arg(p)
    p.add_argument("--depths", type=int, nargs="+", default=[50, 101], choices=[50, 101])
    p.add_argument("--scales", type=int, nargs="+", default=list(SCALES), choices=SCALES)
    cli.add_output(p, what="bench_scales_<device>.{json,md,png}")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise FocalDetError("--device cuda: no CUDA device")
    out = {"run": environment(), "torch": torch.__version__, "device": args.device,
           "machine": platform.processor() or platform.machine(),
           "cpu_threads": torch.get_num_threads(),
           "command": cli.regenerate_command(["-m", "benchmarks.bench_scales"], argv)}
    out.update(run_rounds(lambda: one_round(args.device, args.depths, args.scales, args.repeats),
                          args.rounds, (), "bench_scales"))
    out["rows"] = median_rows(out["per_round"])
    emit(out, args.output, f"bench_scales_{args.device}.json",
         markdown_ratios(out, f"bench_scales, {args.device}, ours / Detectron2 ms per image",
                         out["run"], out["command"]))
    if args.output:
        plot(out["rows"], f"{args.output}/bench_scales_{args.device}.png",
             f"Table 1e speed on {args.device} ({torch.get_num_threads()} threads), median of "
             f"{args.rounds} rounds")
    return out


if __name__ == "__main__":
    cli.run_tool(main, "bench_scales.py")
