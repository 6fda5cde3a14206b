"""demo.py's video path: every frame is drawn, read until the capture ends, whatever frame count
the container reports (none, as a stream; too few; too many)."""
import os

import cv2
import numpy as np
import pytest

from focal_det import demo
from tests.common import CONFIGS

FRAMES = 5
CONFIG = os.path.join(CONFIGS, "builtin", "retinanet_R18_shapes.yaml")


class _Miscounted:
    """An OpenCV capture whose CAP_PROP_FRAME_COUNT is ``count`` (0 or -1: unknown)."""

    def __init__(self, capture, count):
        self._capture, self._count = capture, count

    def get(self, prop):
        return float(self._count) if prop == cv2.CAP_PROP_FRAME_COUNT else self._capture.get(prop)

    def __getattr__(self, name):
        return getattr(self._capture, name)


def _count_frames(path) -> int:
    capture = cv2.VideoCapture(str(path))
    n = sum(1 for _ in demo.read_frames(capture))
    capture.release()
    return n


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A few tiny MJPG frames, each different, written with OpenCV."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    assert writer.isOpened()
    for i in range(FRAMES):
        frame = np.full((48, 64, 3), 40 * i, np.uint8)
        cv2.rectangle(frame, (5 + 8 * i, 10), (25 + 8 * i, 30), (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    assert _count_frames(path) == FRAMES  # the file itself is whole
    return path


@pytest.mark.parametrize("reported", [0, -1, 1, 2, 100])
def test_video_is_read_until_the_capture_ends(clip, tmp_path, monkeypatch, reported):
    monkeypatch.setattr(demo, "open_video",
                        lambda path: _Miscounted(cv2.VideoCapture(path), reported))
    out = tmp_path / "drawn.mp4"
    args = demo.get_parser().parse_args([
        "--config-file", CONFIG, "--video-input", str(clip), "--output", str(out),
        "--opts", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "48",
        "INPUT.MAX_SIZE_TEST", "64"])
    assert demo.run_video(demo.setup_cfg(args), args) == FRAMES
    assert _count_frames(out) == FRAMES
    capture = cv2.VideoCapture(str(out))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (48, 64, 3)


def test_main_draws_a_video_whose_count_is_unknown(clip, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "open_video", lambda path: _Miscounted(cv2.VideoCapture(path), 0))
    demo.main(["--config-file", CONFIG, "--video-input", str(clip), "--output", str(tmp_path),
               "--opts", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "48"])
    assert _count_frames(tmp_path / "clip.mp4") == FRAMES
