# FocalRetinaNet, R-50-FPN, as configs/Base-FocalRetinaNet.yaml and Detectron2 main's
# configs/common/models/retinanet.py: the paper's RetinaNet with focal_det's loss as an object.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from focal_det.losses import FocalLoss
from focal_det.modeling import FocalRetinaNet

model = L(FocalRetinaNet)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=L(LastLevelP6P7)(in_channels=2048, out_channels="${..out_channels}"),
    ),
    head=L(RetinaNetHead)(
        input_shape=[L(ShapeSpec)(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        prior_prob=0.01,  # replaced by FocalRetinaNet's bias_init below
        num_anchors=9,
    ),
    anchor_generator=L(DefaultAnchorGenerator)(
        # Areas 32^2..512^2 on P3..P7, scales 2^0, 2^(1/3), 2^(2/3); 3 aspect ratios: A = 9.
        sizes=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(Matcher)(thresholds=[0.4, 0.5], labels=[0, -1, 1],
                              allow_low_quality_matches=True),
    num_classes=80,
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    smooth_l1_beta=0.0,
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.5,
    max_detections_per_image=100,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
    # focal_det: the loss family (any registered loss object), the paper's prior initialization
    cls_loss=L(FocalLoss)(gamma=2.0, alpha=0.25),
    bias_init="PriorProb",
    prior_prob=0.01,
    loss_normalizer="ema",  # Detectron2's moving average, as Base-FocalRetinaNet.yaml
    matcher_chunk=256,
    # Detectron2's low-quality matches at any IoU (Detectron, the paper's code: 0.4), and
    # Detectron2's N(0, 0.01) head weights ("width_preserving": each conv's gain as at 256).
    low_quality_min_iou=0.0,
    head_weight_init="fixed",
    fold_norms=True,
    channels_last=True,
)
