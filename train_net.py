#!/usr/bin/env python
"""Train and evaluate focal_det models with Detectron2's own trainer, evaluator and launcher.

    python train_net.py --config-file configs/retinanet_R50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file ... --resume          # continue from last_checkpoint
"""
import logging
import os
import sys
import weakref

import focal_det  # first: it imports fvcore/Detectron2 without their import-time warnings
import detectron2.utils.comm as comm
import torch
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import (
    DefaultTrainer,
    HookBase,
    hooks,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from focal_det.evaluation import FocalCOCOEvaluator
from focal_det.utils.ddp import cpu_ddp_support
from focal_det.checkpoint import FocalCheckpointer
from focal_det.config import check_num_classes
from focal_det.data import prepare_datasets
from focal_det.data.checks import FocalDatasetMapper, sanitize_boxes
from focal_det.errors import FocalDetError
from focal_det.preflight import MissingFileError, PreflightError, check_datasets, check_device
from focal_det.data.resumable import PositionalDataset, PositionalSampler, SeededMapper

logger = logging.getLogger("focal_det")


class ResumeStateHook(HookBase):
    """Checkpoints what Detectron2 does not: the torch RNG and RetinaNet's EMA loss normalizer
    (a plain attribute), so that a resumed run continues the uninterrupted one."""

    def _model(self):
        model = self.trainer.model
        return model.module if hasattr(model, "module") else model

    def state_dict(self):
        state = {"torch_rng": torch.get_rng_state()}
        if hasattr(self._model(), "loss_normalizer"):
            state["ema_loss_normalizer"] = float(self._model().loss_normalizer)
        return state

    def load_state_dict(self, state):
        torch.set_rng_state(state["torch_rng"])
        if "ema_loss_normalizer" in state:
            self._model().loss_normalizer = state["ema_loss_normalizer"]


class Trainer(DefaultTrainer):
    def __init__(self, cfg, keep_checkpoints: int = 0):
        """``keep_checkpoints``: keep only this many most recent periodic checkpoints (besides
        model_final); 0 keeps all, as Detectron2 does."""
        self.keep_checkpoints = keep_checkpoints
        with cpu_ddp_support():  # lets several CPU processes (gloo) train too
            super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer made a DetectionCheckpointer just before calling this; swap in ours
        # (atomic saves, code-free loading) before the checkpoint hook captures it.
        self.checkpointer = FocalCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        ret = super().build_hooks()
        for h in ret:
            if isinstance(h, hooks.PeriodicCheckpointer) and self.keep_checkpoints > 0:
                h.max_to_keep = self.keep_checkpoints
        return ret + [ResumeStateHook()]

    @classmethod
    def build_train_loader(cls, cfg, start_position: int = 0):
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        check_num_classes(cfg)  # loading the datasets has set their metadata
        dataset = sanitize_boxes(dataset, cfg.DATASETS.TRAIN)
        mapper = FocalDatasetMapper(cfg, True)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":  # e.g. repeat-factor sampling
            return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
        # Exactly resumable stream (focal_det.data.resumable), otherwise as TrainingSampler.
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return build_detection_train_loader(
            cfg, mapper=SeededMapper(mapper, seed), dataset=PositionalDataset(dataset, seed),
            sampler=PositionalSampler(start_position),
        )

    # Detectron2 v0.6's DefaultTrainer does not checkpoint its SimpleTrainer (the optimizer:
    # momentum buffers), so --resume restarted SGD momentum; later Detectron2 adds "_trainer".
    def state_dict(self):
        ret = super().state_dict()
        ret.setdefault("_trainer", self._trainer.state_dict())
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter > 0 and self.cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
            # Continue the data stream where the checkpointed run was, not at its beginning.
            def build():
                return self.build_train_loader(
                    self.cfg, start_position=self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH)

            if hasattr(self._trainer, "reset_data_loader"):
                # Detectron2 after v0.6: _data_loader_iter is a read-only, lazily made property
                self._trainer.reset_data_loader(build)
            else:  # v0.6: a plain attribute made in the constructor
                self._trainer.data_loader = build()
                self._trainer._data_loader_iter = iter(self._trainer.data_loader)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=FocalDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return FocalCOCOEvaluator(dataset_name, output_dir=output_folder)


def register_coco_datasets(specs) -> None:
    """``--register-coco NAME JSON IMAGE_ROOT`` (repeatable): a COCO-format dataset of your own,
    registered in every process before the config refers to it by NAME."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    for name, json_file, image_root in specs or ():
        if not os.path.isfile(json_file):
            raise MissingFileError(f"--register-coco {name}: annotation file {json_file!r} "
                                    "does not exist")
        if not os.path.isdir(image_root):
            raise MissingFileError(f"--register-coco {name}: image folder {image_root!r} "
                                    "does not exist")
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file", None) == json_file:
                continue  # this same registration, made again (e.g. after the preflight)
            raise PreflightError(f"--register-coco {name}: a dataset with this name is already "
                                 "registered (pick another name)")
        register_coco_instances(name, {}, json_file, image_root)


def load_cfg(args):
    register_coco_datasets(getattr(args, "register_coco", None))
    cfg = focal_det.get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def preflight(args) -> None:
    """Before any process starts or anything is written: the device exists, and every dataset
    this run reads is there and sound (focal_det.preflight)."""
    cfg = load_cfg(args)
    check_device(cfg.MODEL.DEVICE, args.num_gpus)
    names = list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN))
    prepare_datasets(names)
    check_datasets(names)


def setup(args):
    cfg = load_cfg(args)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="focal_det")
    prepare_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    return cfg


def render(cfg, model, num_images, curves: bool = True):
    """Training curves and prediction pictures, written next to the checkpoint."""
    from focal_det.utils.vis import plot_training_curves, save_prediction_images

    if curves:
        logger.info(f"Training curves: {plot_training_curves(cfg.OUTPUT_DIR)}")
    if num_images > 0 and cfg.DATASETS.TEST:
        out = os.path.join(cfg.OUTPUT_DIR, "predictions")
        save_prediction_images(cfg, model, cfg.DATASETS.TEST[0], out, num_images)
        logger.info(f"Predictions next to ground truth: {out}/*.png")


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = FocalCheckpointer(model, save_dir=cfg.OUTPUT_DIR,
                                         require_same_classes=True)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
            render(cfg, model, args.vis_images, curves=False)  # no training, no curves
        return res

    trainer = Trainer(cfg, keep_checkpoints=args.keep_checkpoints)
    trainer.resume_or_load(resume=args.resume)
    res = trainer.train()
    if comm.is_main_process() and args.vis_images >= 0:
        render(cfg, trainer.model, args.vis_images)
        logger.info(f"Outputs (checkpoint, metrics.json, pictures) are in {cfg.OUTPUT_DIR}")
    return res


def get_parser():
    parser = default_argument_parser()
    parser.add_argument("--vis-images", type=int, default=0,
                        help="after training, draw predictions on this many test images "
                             "(and always the training curves); -1 draws nothing")
    parser.add_argument("--keep-checkpoints", type=int, default=0, metavar="N",
                        help="keep only the N most recent periodic checkpoints besides "
                             "model_final (default 0: all, as Detectron2)")
    parser.add_argument("--register-coco", nargs=3, action="append",
                        metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format dataset under NAME (repeatable); then "
                             "use it in DATASETS.TRAIN / DATASETS.TEST")
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    try:
        preflight(args)
        launch(main, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except FocalDetError as e:  # the user's input: one message, no traceback
        sys.exit(f"train_net.py: {e}")
