"""What ``train_net.py`` does: parse, check before any work, launch, train or evaluate.

``.yaml`` and LazyConfig ``.py`` configs train and evaluate through one path,
:class:`focal_det.engine.Trainer` (a ``.py`` config as its
:class:`focal_det.lazy_run.LazyRunConfig` view). Both take Detectron2's command line (``--num-gpus``,
``--resume``, ``--eval-only``, ...) plus ``--vis-images``, ``--keep-checkpoints``,
``--register-coco``, ``--dist-timeout`` and ``--preempt-signals``. Processes are started by
:mod:`focal_det.engine.launcher` (or by torchrun / srun); signals by
:mod:`focal_det.engine.preemption`.
"""
import logging
import os

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from .. import cli
from ..checkpoint import FocalCheckpointer
from ..data import prepare_datasets
from ..preflight import check_datasets, check_device, check_weights
from ..lazy_run import LazyRunConfig
from ..precision import resolve
from . import launcher, preemption
from .amp import train_precision
from .trainer import Trainer, check_repeat_threshold

logger = logging.getLogger("focal_det")


def get_parser():
    parser = default_argument_parser()
    parser.add_argument("--vis-images", type=int, default=0,
                        help="after training, draw predictions on this many test images "
                             "(and always the training curves); -1 draws nothing")
    parser.add_argument("--keep-checkpoints", type=int, default=0, metavar="N",
                        help="keep only the N most recent periodic checkpoints besides "
                             "model_final (default 0: all, as Detectron2)")
    cli.add_register_coco(parser)
    parser.add_argument("--dist-timeout", type=float, default=600, metavar="SECONDS",
                        help="process group timeout (default 600; Detectron2's is 1800)")
    parser.add_argument("--preempt-signals", nargs="*", default=list(preemption.DEFAULT_SIGNALS),
                        metavar="SIG", help="signals that stop training with a checkpoint and "
                        f"exit code {preemption.EXIT_PREEMPTED} (default "
                        f"{' '.join(preemption.DEFAULT_SIGNALS)}; none: no handling)")
    parser.add_argument("--check-stability", action="store_true",
                        help="before training, measure lambda_max and run an LR range test "
                             "(python -m focal_det.stability) and print them; refuses to start "
                             "when the check's verdict is above the bound by more than "
                             "focal_det.stability.command.REFUSE_FACTOR")
    parser.add_argument("--ignore-stability", action="store_true",
                        help="with --check-stability: train even if the check refuses")
    from ..stability.command import add_check_args
    add_check_args(parser, prefix="stability-")
    return parser


def load_cfg(args):
    """The run's config, after registering ``--register-coco``: a ``CfgNode`` for a ``.yaml``
    file, the :class:`LazyRunConfig` view of a ``.py`` one."""
    cli.register_coco_datasets(getattr(args, "register_coco", None))
    return cli.load_run_config(args.config_file, args.opts)


def _key(cfg, name: str) -> str:
    return cfg.key(name) if isinstance(cfg, LazyRunConfig) else name


def preflight(args) -> None:
    """Before any process starts or anything is written: the device exists and can run the
    precisions asked for, the weights file exists, and every dataset this run reads is there
    and sound (focal_det.preflight)."""
    cfg = load_cfg(args)
    device = cfg.MODEL.DEVICE
    names = list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN))
    resuming = args.resume and os.path.exists(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if not resuming:  # a resumed run loads its own checkpoint instead
        check_weights(_key(cfg, "MODEL.WEIGHTS"), cfg.MODEL.WEIGHTS)
    check_device(device, args.num_gpus)
    if not args.eval_only:
        train_precision(cfg)
        if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
            check_repeat_threshold(cfg)
    resolve(cfg.MODEL.FOCAL_DET.INFERENCE_PRECISION, device,
            key=_key(cfg, "MODEL.FOCAL_DET.INFERENCE_PRECISION"))
    preemption.signal_names(args.preempt_signals)
    prepare_datasets(names)
    check_datasets(names)
    return device


def setup(args):
    """The frozen config, with Detectron2's setup (output folder, logs, seed) done."""
    cfg = load_cfg(args)
    # Detectron2 saves the config it is given (config.yaml): the LazyConfig itself for .py
    default_setup(cfg.lazy if isinstance(cfg, LazyRunConfig) else cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="focal_det")
    prepare_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    return cfg


def render(cfg, model, num_images, curves: bool = True):
    """Training curves and prediction pictures, written next to the checkpoint."""
    from ..utils.vis import plot_training_curves, save_prediction_images

    if curves:
        logger.info(f"Training curves: {plot_training_curves(cfg.OUTPUT_DIR)}")
    if num_images > 0 and cfg.DATASETS.TEST:
        out = os.path.join(cfg.OUTPUT_DIR, "predictions")
        save_prediction_images(cfg, model, cfg.DATASETS.TEST[0], out, num_images)
        logger.info(f"Predictions next to ground truth: {out}/*.png")


def main(args):
    """One process's work (``launch`` runs it in every process). Signals (``--preempt-signals``)
    end training with a checkpoint and evaluation promptly, with exit code 75."""
    with preemption.handling(args.preempt_signals):
        preemption.attach_store()
        try:
            return _main(args)
        except preemption.Preempted:  # --eval-only (training handles it in Trainer.train)
            logger.warning(f"Stopped by {preemption.STATE.signal_name} during evaluation; "
                           f"exiting with code {preemption.EXIT_PREEMPTED}")
            raise SystemExit(preemption.EXIT_PREEMPTED)


def _main(args):
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


def run_command(argv=None, prog: str = "train_net.py"):
    """The whole command: parse, preflight, launch ``main`` in every process. A problem with
    the user's input ends the command with one message and no traceback (``cli.run_tool``)."""
    return cli.run_tool(_command, prog, argv)


def _command(argv):
    args = get_parser().parse_args(argv)
    print("Command Line Args:", args)
    device = preflight(args)
    if args.check_stability and not args.eval_only:  # once, before any process starts
        from ..stability.command import check_before_training, check_options
        check_before_training(load_cfg(args), force=args.ignore_stability,
                              **check_options(args, prefix="stability_"))
    launcher.launch(main, args, device)
