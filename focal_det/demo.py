"""What ``demo.py`` does: draw focal_det detections on images or a video, with Detectron2's
visualizers and :class:`focal_det.Predictor` (safe weight loading).

A video is read until the capture ends, as Detectron2's ``demo/predictor.py`` reads it: the
frame count a container reports is at most a progress hint (streams and some containers report
none, others too few).
"""
import argparse
import glob
import logging
import os
import time
from typing import Iterator, List, Optional

import cv2
import numpy as np
import tqdm
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from . import cli
from .inference import inference_spec, set_score_threshold
from .predictor import Predictor

__all__ = ["IMAGE_EXTS", "get_parser", "setup_cfg", "expand_inputs", "open_video",
           "read_frames", "run_images", "run_video", "main", "run_command"]

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


def expand_inputs(patterns) -> List[str]:
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


def output_path(args, path, many) -> Optional[str]:
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
    predictor, metadata = Predictor(cfg), metadata_of(cfg)
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


def open_video(path: str):
    """The capture ``run_video`` reads (a seam: tests wrap it to report a wrong frame count)."""
    return cv2.VideoCapture(path)


def read_frames(capture) -> Iterator[np.ndarray]:
    """Every frame until the capture ends, whatever frame count it reports."""
    while capture.isOpened():
        ok, frame = capture.read()
        if not ok:
            break
        yield frame


def _video_output(args) -> Optional[str]:
    out = args.output
    if out and (os.path.isdir(out) or not os.path.splitext(out)[1]):
        os.makedirs(out, exist_ok=True)
        out = os.path.join(out, os.path.splitext(os.path.basename(args.video_input))[0] + ".mp4")
    return out


def run_video(cfg, args) -> int:
    """Draw detections on every frame of ``args.video_input``; writes ``args.output`` (an
    .mp4 in a folder, or the file named). Returns the number of frames drawn."""
    video = open_video(args.video_input)
    frames = read_frames(video)
    first = next(frames, None)  # a file OpenCV cannot read is an error before any work
    if first is None:
        video.release()
        raise SystemExit(f"--video-input {args.video_input!r}: not a video this OpenCV can read")
    check_output(args, [args.video_input])
    predictor, metadata = Predictor(cfg), metadata_of(cfg)
    height, width = first.shape[:2]
    fps = video.get(cv2.CAP_PROP_FPS) or 10.0
    reported = int(video.get(cv2.CAP_PROP_FRAME_COUNT))  # a hint for the progress bar only
    out = _video_output(args)
    writer = None
    if out:
        writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    visualizer = VideoVisualizer(metadata, ColorMode.IMAGE)
    count = 0
    try:
        for frame in tqdm.tqdm(_prepend(first, frames), total=reported if reported > 0 else None,
                               unit="frame"):
            instances = predictor(frame)["instances"].to("cpu")
            drawn = visualizer.draw_instance_predictions(frame[:, :, ::-1], instances)
            if writer is not None:
                writer.write(drawn.get_image()[:, :, ::-1])
            count += 1
    finally:
        video.release()
        if writer is not None:
            writer.release()
    if writer is not None:
        logger.info(f"Wrote {count} annotated frames to {out}")
    else:
        logger.info(f"Drew {count} frames of {args.video_input}")
    return count


def _prepend(first, rest) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logger(name="focal_det")
    setup_logger(name="fvcore")
    cfg = setup_cfg(args)
    if bool(args.input) == bool(args.video_input):
        raise SystemExit("give exactly one of --input or --video-input")
    if args.input and run_images(cfg, args):
        raise SystemExit(1)
    if args.video_input:
        run_video(cfg, args)


def run_command(argv=None, prog: str = "demo.py") -> None:
    """The whole command; a problem with the user's input (weights, files) ends it with one
    message and no traceback."""
    cli.run_tool(main, prog, argv)
