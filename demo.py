#!/usr/bin/env python
"""Draw focal_det detections on images or a video, with Detectron2's predictor and visualizers.

    python demo.py --config-file configs/builtin/retinanet_R18_shapes.yaml \
        --input 'photos/*.jpg' folder_of_images/ --output out/ \
        --opts MODEL.WEIGHTS output/demo/model_final.pth
    python demo.py --config-file ... --video-input clip.mp4 --output clip_annotated.mp4 --opts ...
    python demo.py --config-file configs/lazy/retinanet_R18_shapes.py --input img.jpg \
        --output out/ --opts train.init_checkpoint=output/lazy/model_final.pth
"""
import argparse
import glob
import logging
import os
import sys
import time

import focal_det  # first: it imports fvcore/Detectron2 without their import-time warnings
import cv2
import tqdm
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from focal_det import cli
from focal_det.errors import FocalDetError
from focal_det.inference import inference_spec, set_score_threshold


IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
logger = logging.getLogger("focal_det.demo")


def get_parser():
    p = argparse.ArgumentParser(description="focal_det demo (Detectron2's demo interface)")
    p.add_argument("--input", nargs="+", help="image files, globs ('imgs/*.jpg') or folders")
    p.add_argument("--video-input", help="a video file; writes an annotated video to --output")
    p.add_argument("--output", help="a file (one input) or a folder for the drawn results")
    p.add_argument("--confidence-threshold", type=float, default=0.5)
    cli.add_config_args(p, opts="flag")  # --opts last: it takes the rest of the line
    return p


def setup_cfg(args):
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise SystemExit(f"--confidence-threshold={args.confidence_threshold} must be in [0, 1]")
    cfg = cli.load_config(args.config_file, args.opts, freeze=False)
    set_score_threshold(cfg, args.confidence_threshold)
    if hasattr(cfg, "freeze"):
        cfg.freeze()
    return cfg


def expand_inputs(patterns):
    """Files, globs and folders to a sorted list of image paths; errors name what is missing."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))
                     if f.lower().endswith(IMAGE_EXTS)]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise SystemExit(f"--input {pattern!r}: no such image file, glob match or folder")
        paths.extend(found)
    return paths


def metadata_of(cfg):
    return MetadataCatalog.get(inference_spec(cfg).test_dataset or "__unused")


def output_path(args, path, many):
    if not args.output:
        return None
    if many or os.path.isdir(args.output) or not os.path.splitext(args.output)[1]:
        os.makedirs(args.output, exist_ok=True)
        return os.path.join(args.output, os.path.basename(path))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    return args.output


def check_output(args, paths) -> None:
    """Before any work: one output file cannot hold several pictures."""
    if args.output and len(paths) > 1 and os.path.splitext(args.output)[1] \
            and not os.path.isdir(args.output):
        raise SystemExit(f"--output {args.output!r} is a file name, but there are {len(paths)} "
                         "inputs: give a folder")
    if not args.output:
        logger.warning("No --output given: detections are logged, no picture is written.")


def run_images(cfg, args) -> int:
    """Draw detections on every readable image; unreadable ones are reported and skipped.
    Returns the number of images that failed."""
    paths = expand_inputs(args.input)
    check_output(args, paths)
    predictor, metadata = focal_det.Predictor(cfg), metadata_of(cfg)
    failed, written = [], 0
    for path in tqdm.tqdm(paths, disable=not args.output, unit="image"):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            logger.error(f"{path}: not a readable image; skipped")
            failed.append(path)
            continue
        start = time.time()
        instances = predictor(image)["instances"].to("cpu")
        logger.info(f"{path}: {len(instances)} detections in {time.time() - start:.2f}s")
        out = output_path(args, path, len(paths) > 1)
        if out:
            vis = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
            drawn = vis.draw_instance_predictions(instances).get_image()[:, :, ::-1]
            if not cv2.imwrite(out, drawn):
                logger.error(f"{out}: could not be written")
                failed.append(path)
                continue
            written += 1
    if args.output:
        logger.info(f"Wrote {written} image(s) to {args.output}")
    if failed:
        logger.error(f"{len(failed)} of {len(paths)} input(s) failed: {', '.join(failed[:5])}"
                     + (" ..." if len(failed) > 5 else ""))
    return len(failed)


def run_video(cfg, args) -> int:
    video = cv2.VideoCapture(args.video_input)
    ok, first = video.read() if video.isOpened() else (False, None)
    if not ok:
        raise SystemExit(f"--video-input {args.video_input!r}: not a video this OpenCV can read")
    check_output(args, [args.video_input])
    predictor, metadata = focal_det.Predictor(cfg), metadata_of(cfg)
    width, height = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = video.get(cv2.CAP_PROP_FPS) or 10.0
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    out = args.output
    if out and (os.path.isdir(out) or not os.path.splitext(out)[1]):
        os.makedirs(out, exist_ok=True)
        out = os.path.join(out, os.path.splitext(os.path.basename(args.video_input))[0] + ".mp4")
    writer = None
    if out:
        writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    visualizer = VideoVisualizer(metadata, ColorMode.IMAGE)
    count = 0
    for i in tqdm.tqdm(range(max(frames, 1)), unit="frame"):
        ok, frame = (True, first) if i == 0 else video.read()
        if not ok:
            break
        instances = predictor(frame)["instances"].to("cpu")
        drawn = visualizer.draw_instance_predictions(frame[:, :, ::-1], instances)
        if writer is not None:
            writer.write(drawn.get_image()[:, :, ::-1])
        count += 1
    video.release()
    if writer is not None:
        writer.release()
        logger.info(f"Wrote {count} annotated frames to {out}")
    if count == 0:
        raise SystemExit(f"--video-input {args.video_input!r}: no frame could be read")
    return 0


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="focal_det")
    setup_logger(name="fvcore")
    cfg = setup_cfg(args)
    if bool(args.input) == bool(args.video_input):
        raise SystemExit("give exactly one of --input or --video-input")
    failed = run_images(cfg, args) if args.input else run_video(cfg, args)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except FocalDetError as e:  # the user's input (weights, files): one message, no traceback
        sys.exit(f"demo.py: {e}")
