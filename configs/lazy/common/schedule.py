# Optimizer, LR schedule and training loop settings of the paper's 1x recipe: SGD, LR 0.01 at
# 16 images, momentum 0.9, weight decay 1e-4, x0.1 at 60k and 80k of 90k iterations, Detectron2's
# linear warm-up (factor 1/1000 over 1000 iterations), as configs/retinanet_R50_FPN_1x.yaml.
import torch
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),  # params.model: set by the loop
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[60000, 80000],
                                         num_updates=90000),
    warmup_length=1000 / 90000,
    warmup_method="linear",
    warmup_factor=0.001,
)

train = dict(
    output_dir="./output",
    init_checkpoint="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    max_iter=90000,
    amp=dict(enabled=False, precision="auto"),  # precision: focal_det.precision
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=0,  # evaluate once, after the last iteration (TEST.EVAL_PERIOD 0 in .yaml)
    log_period=20,
    device="cuda",
    seed=-1,
)
