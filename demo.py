#!/usr/bin/env python
"""Draw focal_det detections on images or a video, with Detectron2's predictor and visualizers.

    python demo.py --config-file configs/builtin/retinanet_R18_shapes.yaml \
        --input 'photos/*.jpg' folder_of_images/ --output out/ \
        --opts MODEL.WEIGHTS output/demo/model_final.pth
    python demo.py --config-file ... --video-input clip.mp4 --output clip_annotated.mp4 --opts ...
    python demo.py --config-file configs/lazy/retinanet_R18_shapes.py --input img.jpg \
        --output out/ --opts train.init_checkpoint=output/lazy/model_final.pth

The logic (parser, images, video) is ``focal_det.demo``.
"""
import focal_det  # noqa: F401  (first: it imports fvcore/Detectron2 without their warnings)
from focal_det.demo import main, run_command  # noqa: F401  (main: for callers in Python)

if __name__ == "__main__":
    run_command(prog="demo.py")
