"""FocalRetinaNet: Detectron2's RetinaNet with the paper's loss family as a named choice.

Shape legend: N images, R anchors over all levels (sum of Hi * Wi * A), K classes,
A anchors per location. ``gt_labels`` (N, R) int64: class in [0, K), K = background, -1 = ignore.

What differs from Detectron2's ``RetinaNet`` (everything else is inherited, so parameter names,
anchors, matching, box coding, box losses, NMS and post-processing are Detectron2's own):

- the classification loss comes from ``focal_det.losses`` (``MODEL.FOCAL_DET.CLS_LOSS``) and is
  computed from integer labels, without a one-hot target or a gather of the valid logits;
- inference turns logits into scores with that loss's ``probs`` (sigmoid(gamma x + beta) for FL*);
- the last class conv's bias comes from ``MODEL.FOCAL_DET.HEAD.BIAS_INIT``;
- the loss normalizer is ``MODEL.FOCAL_DET.LOSS_NORMALIZER``: "num_fg" (foreground anchors of
  the whole batch, summed over workers), "ema" (Detectron2's moving average) or "constant"
  (a fixed count, ``MODEL.FOCAL_DET.LOSS_NORMALIZER_VALUE``).
"""
import logging
from functools import partial
from typing import List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, ImageList
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import Tensor

from ..config import LOSS_NORMALIZERS, check_choice, check_range, validate_retinanet_config
from ..losses import build_cls_loss
from ..losses.base import require_loss
from ..precision import PRECISIONS
from .decoding import decode_detections
from .fold import fold_norms as fold_norms_
from .class_head import ClassHeadCheck, class_conv, identity
from .crowd import ignore_crowd_anchors
from .head_init import apply_head_weight_init
from .matching import match_in_chunks, with_low_quality_min_iou
from .mixed import float32_outputs, inference_autocast, no_autocast
from .sampling import anchor_losses, build_anchor_sampler
from .train_state import ema_normalizer_state, load_ema_normalizer_state

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class FocalRetinaNet(RetinaNet):
    """RetinaNet (Lin et al. 2017) driven by focal_det's registered loss family."""

    @configurable
    def __init__(self, *, cls_loss, bias_init: str = "PriorProb", prior_prob: float = 0.01,
                 loss_normalizer: str = "num_fg", matcher_chunk: int = 256,
                 fold_norms: bool = True, channels_last: bool = True,
                 crowd_ioa_thresh: Optional[float] = None, anchor_sampler=None,
                 inference_precision: str = "float32", low_quality_min_iou: float = 0.0,
                 head_weight_init: str = "fixed", loss_normalizer_value: float = 0.0,
                 **kwargs):
        """
        Args:
            cls_loss: a :class:`focal_det.losses.ClassificationLoss` (its docstring is the
                contract); it says how many logits per anchor the class conv predicts.
            bias_init, prior_prob: the class conv's initial bias, by the initializer registered
                under ``bias_init`` in ``focal_det.bias_init`` (the paper's ``PriorProb``:
                every anchor starts at foreground probability ``prior_prob`` under
                ``cls_loss.probs``). Applied here, so keyword and config builds agree.
            loss_normalizer: "num_fg", "ema" or "constant" (see module docstring).
            loss_normalizer_value: with "constant", the normalizer: a foreground count of the
                whole batch (all workers), fixed whatever the batch holds.
            matcher_chunk: images with more GT boxes than this are matched to anchors in chunks
                of this many boxes (bounded memory, same result).
            fold_norms: fold FrozenBN (always) and BN (at inference) into the conv before it
                (``focal_det.modeling.fold``; parameters and state_dict unchanged).
            channels_last: keep conv weights and the input batch in channels-last layout.
            crowd_ioa_thresh: with crowd boxes in the inputs (``"crowd_boxes"``, kept by the
                mapper with ``MODEL.FOCAL_DET.CROWD.ENABLED``), background anchors covered by a
                crowd box by at least this fraction of their area are ignored
                (:mod:`focal_det.modeling.crowd`); None: crowds are not used.
            anchor_sampler: which anchors the classification loss trains on
                (:mod:`focal_det.modeling.sampling`, e.g. ``OHEM``); None: all (the paper's FL).
            inference_precision: the autocast dtype of the network at inference, "float32"
                (none), "bfloat16", "float16" or "auto" (:mod:`focal_det.modeling.mixed`).
            low_quality_min_iou: a GT box's best anchor is positive only at this IoU or more
                (Detectron: 0.4); 0: at any IoU, Detectron2 (:mod:`focal_det.modeling.matching`).
            head_weight_init: "fixed" (N(0, 0.01), Detectron2) or "width_preserving" (each head
                conv's gain as at 256 channels; :mod:`focal_det.modeling.head_init`).
            kwargs: everything :class:`detectron2.modeling.RetinaNet` takes.
        """
        super().__init__(**kwargs)
        require_loss(cls_loss).check_num_classes(self.num_classes)  # e.g. one alpha per class
        # Logits per anchor: K, or K + 1 for a loss with a background logit (softmax FL); the
        # paper's prior initialization, through the loss's own probability mapping.
        self.num_logits = cls_loss.num_logits(self.num_classes)
        self.head.cls_score = class_conv(self.head.cls_score, cls_loss, self.num_classes,
                                         bias_init, prior_prob)
        apply_head_weight_init(self.head, head_weight_init)
        self.anchor_matcher = with_low_quality_min_iou(self.anchor_matcher, low_quality_min_iou)
        check_choice("loss_normalizer", loss_normalizer, LOSS_NORMALIZERS)
        if loss_normalizer == "constant" and not loss_normalizer_value > 0:
            raise ValueError(f"loss_normalizer 'constant' needs loss_normalizer_value > 0, got "
                             f"{loss_normalizer_value!r}")
        self.loss_normalizer_value = float(loss_normalizer_value)
        if matcher_chunk < 1:
            raise ValueError(f"MODEL.FOCAL_DET.MATCHER_CHUNK={matcher_chunk!r} must be >= 1")
        self.matcher_chunk = matcher_chunk
        if crowd_ioa_thresh is not None:
            check_range("MODEL.FOCAL_DET.CROWD.IOA_THRESH", crowd_ioa_thresh, 0.0, 1.0,
                        low_open=True)
        self.crowd_ioa_thresh = crowd_ioa_thresh
        self.anchor_sampler = anchor_sampler
        self.cls_loss = cls_loss
        self.normalizer_mode = loss_normalizer  # not `loss_normalizer`: the EMA state lives there
        if fold_norms:
            fold_norms_(self)
        for module in self.head.modules():  # the head's ReLUs write in place: same values,
            if type(module) is torch.nn.ReLU:  # 8 fewer feature-map allocations per level
                module.inplace = True
        check_choice("inference_precision", inference_precision, PRECISIONS)
        self.inference_precision = inference_precision
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def checkpoint_hook(self) -> ClassHeadCheck:
        """What FocalCheckpointer records and checks of this model's class head."""
        return ClassHeadCheck(self.head.cls_score.weight.shape, self.num_classes,
                              self.num_logits, type(self.cls_loss).__name__,
                              {n: b.shape for n, b in self.named_buffers()
                               if n.startswith("cls_loss.")})  # EFL's statistics

    def training_state(self) -> dict:
        """What exact resume needs beyond ``state_dict()`` (``Trainer`` checkpoints it; see
        :mod:`focal_det.modeling.train_state`)."""
        return ema_normalizer_state(self)

    def load_training_state(self, state: dict) -> None:
        load_ema_normalizer_state(self, state)

    def preprocess_image(self, batched_inputs):
        images = super().preprocess_image(batched_inputs)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    @classmethod
    def from_config(cls, cfg):
        validate_retinanet_config(cfg)
        ret = super().from_config(cfg)
        ret["cls_loss"] = build_cls_loss(cfg)
        ret["bias_init"] = cfg.MODEL.FOCAL_DET.HEAD.BIAS_INIT
        ret["prior_prob"] = cfg.MODEL.FOCAL_DET.HEAD.PRIOR_PROB
        ret["loss_normalizer"] = cfg.MODEL.FOCAL_DET.LOSS_NORMALIZER
        ret["loss_normalizer_value"] = cfg.MODEL.FOCAL_DET.LOSS_NORMALIZER_VALUE
        ret["matcher_chunk"] = cfg.MODEL.FOCAL_DET.MATCHER_CHUNK
        crowd = cfg.MODEL.FOCAL_DET.CROWD
        ret["crowd_ioa_thresh"] = crowd.IOA_THRESH if crowd.ENABLED else None
        ret["anchor_sampler"] = build_anchor_sampler(cfg)
        ret["fold_norms"] = cfg.MODEL.FOCAL_DET.FOLD_NORMS
        ret["channels_last"] = cfg.MODEL.FOCAL_DET.CHANNELS_LAST
        ret["inference_precision"] = cfg.MODEL.FOCAL_DET.INFERENCE_PRECISION
        ret["low_quality_min_iou"] = cfg.MODEL.FOCAL_DET.LOW_QUALITY_MATCH_MIN_IOU
        ret["head_weight_init"] = cfg.MODEL.FOCAL_DET.HEAD.WEIGHT_INIT
        return ret

    def forward(self, batched_inputs):
        if not self.training:
            with inference_autocast(self.inference_precision, self.device):
                return super().forward(batched_inputs)
        if self.crowd_ioa_thresh is None:
            return super().forward(batched_inputs)
        # DenseDetector.forward's training half, with each image's crowd boxes passed on
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        predictions = self.head(features)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        crowd_boxes = [x.get("crowd_boxes") for x in batched_inputs]
        return self.forward_training(images, features, predictions, gt_instances, crowd_boxes)

    @torch.no_grad()
    def label_anchors(self, anchors, gt_instances, crowd_boxes=None):
        """As Detectron2's ``RetinaNet.label_anchors`` (labels (R,) in {-1, 0..K-1, K}, matched
        boxes (R, 4)), with the IoU matrix computed in chunks of GT boxes when there are many.
        ``crowd_boxes``: per image, its crowd regions (Boxes or None), used with
        ``crowd_ioa_thresh``."""
        anchors = Boxes.cat(anchors)
        gt_labels, matched_gt_boxes = [], []
        if crowd_boxes is None or self.crowd_ioa_thresh is None:
            crowd_boxes = [None] * len(gt_instances)
        for gt, crowd in zip(gt_instances, crowd_boxes):
            matched_idxs, anchor_labels = match_in_chunks(
                self.anchor_matcher, gt.gt_boxes, anchors, self.matcher_chunk
            )
            if len(gt) > 0:
                boxes_i = gt.gt_boxes.tensor[matched_idxs]
                labels_i = gt.gt_classes[matched_idxs]
                labels_i[anchor_labels == 0] = self.num_classes  # background
                labels_i[anchor_labels == -1] = -1  # ignored
            else:
                boxes_i = torch.zeros_like(anchors.tensor)
                labels_i = torch.zeros_like(matched_idxs) + self.num_classes
            if crowd is not None:
                labels_i = ignore_crowd_anchors(labels_i, anchors, crowd, self.crowd_ioa_thresh,
                                                self.num_classes)
            gt_labels.append(labels_i)
            matched_gt_boxes.append(boxes_i)
        return gt_labels, matched_gt_boxes

    def _normalizer(self, num_pos_anchors: int) -> float:
        if self.normalizer_mode == "ema":
            return self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100)
        world = comm.get_world_size()
        if self.normalizer_mode == "constant":  # the batch's count: each worker's share
            return self.loss_normalizer_value / world
        # DDP averages gradients over workers, so dividing each worker's loss by the mean
        # foreground count makes the total the batch's loss over the batch's foreground count.
        if world > 1:
            count = torch.tensor([float(num_pos_anchors)], device=self.device)
            torch.distributed.all_reduce(count)
            return max(count.item() / world, 1.0 / world)
        return float(max(num_pos_anchors, 1))

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """
        Args:
            anchors (list[Boxes]): one Boxes per level.
            pred_logits, pred_anchor_deltas (list[Tensor]): per level, (N, Hi*Wi*A, K or 4).
            gt_labels (list[Tensor]): N tensors (R,); gt_boxes: N tensors (R, 4).

        Returns:
            dict[str, Tensor]: "loss_cls" and "loss_box_reg", each summed and divided by the
            normalizer.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = int(pos_mask.sum().item())
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._normalizer(num_pos_anchors)

        if self.anchor_sampler is None:
            divisor = normalizer
            loss_cls = self.classification_loss(pred_logits, gt_labels) / divisor
        else:  # e.g. OHEM: the loss of the chosen anchors over their number
            boxes = Boxes.cat(anchors).tensor
            box_coder = self.box2box_transform if self.box_reg_loss_type == "smooth_l1" else None
            anchor_loss = partial(anchor_losses, self.cls_loss, self.num_classes, boxes,
                                  pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                                  box_coder, self.smooth_l1_beta)
            chosen = self.anchor_sampler.select(boxes, gt_labels, self.num_classes, anchor_loss)
            sampled = torch.where(chosen, gt_labels, torch.full_like(gt_labels, -1))
            divisor = self.anchor_sampler.normalizer(chosen)
            loss_cls = self.classification_loss(pred_logits, sampled) / divisor
        self.cls_loss.observe_normalizer(divisor, comm.get_world_size())  # EFL's statistics
        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg / normalizer}

    def forward_training(self, images, features, predictions, gt_instances, crowd_boxes=None):
        """Detectron2's, with ``num_logits`` logits per anchor (K + 1 for softmax FL) and each
        image's crowd boxes (see :meth:`label_anchors`)."""
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_logits, 4])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances, crowd_boxes)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    def classification_loss(self, pred_logits: List[Tensor], gt_labels: Tensor) -> Tensor:
        """The classification loss summed over all non-ignored anchors (not normalized).

        ``pred_logits``: per level, (N, Hi*Wi*A, K); ``gt_labels`` (N, R) as from
        :meth:`label_anchors` (stacked). Level by level: the logits stay views of the class
        conv's outputs (no concatenated copy in forward; gradients land in the conv's own
        layout in backward)."""
        loss_cls, start = 0.0, 0
        for logits in pred_logits:
            end = start + logits.shape[1]
            loss_cls = loss_cls + self.cls_loss(logits, gt_labels[:, start:end])
            start = end
        return loss_cls

    def dense_outputs(self, images: ImageList):
        """The network's dense outputs for preprocessed ``images``: anchors (list of Boxes, one
        per level), and per level the class logits (N, Hi*Wi*A, K) and box deltas
        (N, Hi*Wi*A, 4), as ``forward`` computes them before the loss or the decoding."""
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        anchors = self.anchor_generator(features)
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            self.head(features), [self.num_logits, 4])
        return anchors, pred_logits, pred_anchor_deltas

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ):
        """Detectron2's post-processing (scores = ``cls_loss.probs``), with the same result
        and less work: see :mod:`focal_det.modeling.decoding`. Float32 whatever the
        network's precision (:mod:`focal_det.modeling.mixed`)."""
        if predictions[0][0].dtype != torch.float32:  # the network ran under autocast
            with no_autocast(self.device):
                return self.forward_inference(images, features, float32_outputs(predictions))
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_logits, 4]
        )
        anchors = self.anchor_generator(features)
        probs = self.cls_loss.probs
        if not self.cls_loss.probs_elementwise:
            # e.g. softmax: a score depends on all of its anchor's logits, so the candidates
            # are chosen on the scores themselves (decoding's shortcut needs an elementwise map)
            pred_logits, probs = [probs(x) for x in pred_logits], identity
        if torch.jit.is_tracing():  # the fast path branches on data; Detectron2's traces
            return [
                self.inference_single_image(
                    anchors, [probs(x[i]) for x in pred_logits],
                    [x[i] for x in pred_anchor_deltas], image_size)
                for i, image_size in enumerate(images.image_sizes)
            ]
        return decode_detections(
            anchors, pred_logits, pred_anchor_deltas, images.image_sizes,
            probs=probs, box2box_transform=self.box2box_transform,
            score_thresh=self.test_score_thresh, topk_candidates=self.test_topk_candidates,
            nms_thresh=self.test_nms_thresh, max_detections=self.max_detections_per_image,
        )
