# The built-in default (configs/builtin/retinanet_R18_shapes.yaml) as a LazyConfig: RetinaNet
# R18-FPN from scratch on the generated shapes data, 128 px, 2 CPU cores. The model is the same
# (parameter names, shapes and loss: tests/test_lazy_config.py), and it trains through the same
# engine as the .yaml run (every flag, the exactly resumable data stream, exact --resume:
# tests/test_resume.py).
#   python train_net.py --config-file configs/lazy/retinanet_R18_shapes.py
#   python train_net.py --config-file ... --eval-only train.init_checkpoint=output/lazy/model_final.pth
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from focal_det.solver import ClippedSGD

from .common.coco import dataloader
from .common.focal_retinanet import model
from .common.schedule import lr_multiplier, optimizer, train

# Model: R18 with BN everywhere (from scratch), 64 FPN channels, 2 head convs, 4 classes.
model.backbone.bottom_up.stem = L(BasicStem)(in_channels=3, out_channels=64, norm="BN")
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="BN")
model.backbone.bottom_up.freeze_at = 0
model.backbone.norm = "BN"
model.backbone.out_channels = 64
model.backbone.top_block.in_channels = 512
model.head.input_shape = [L(ShapeSpec)(channels=64)] * 5
model.head.conv_dims = [64, 64]
model.head.norm = "BN"  # per-level BN in the head (Detectron2's CycleBatchNormList)
# Objects are 10-72 px: areas 16^2..256^2 on P3..P7 (3 scales x 3 ratios as in the paper).
model.anchor_generator.sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)]
                                for x in [16, 32, 64, 128, 256]]
model.num_classes = 4
model.pixel_std = [57.375, 57.120, 58.395]
model.loss_normalizer = "num_fg"

# Data: the built-in shapes dataset at 128 px (generated on first use), 8 images a batch.
dataloader.train.dataset.names = "focal_det_shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128,), sample_style="choice", max_size=128),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "focal_det_shapes_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)]
dataloader.test.num_workers = 1

# Solver: LR 0.02 at 8 images, gradients clipped per tensor at norm 10 (SOLVER.CLIP_GRADIENTS),
# warm-up 100 iterations from 1/1000, x0.1 at 2200 and 2500 of 2700.
optimizer = L(ClippedSGD)(params=optimizer.params, lr=0.02, momentum=0.9, weight_decay=1e-4,
                          clip_type="norm", clip_value=10.0)
lr_multiplier.scheduler.milestones = [2200, 2500]
lr_multiplier.scheduler.num_updates = 2700
lr_multiplier.warmup_length = 100 / 2700

train.init_checkpoint = ""
train.max_iter = 2700
train.checkpointer.period = 1000
train.eval_period = 900
train.device = "cpu"
train.seed = 2017
train.output_dir = "output/lazy"
