# Detectron2's model-zoo recipe on the paper's 1x schedule (as configs/retinanet_R50_FPN_1x.yaml), as a LazyConfig:
#   python train_net.py --config-file configs/lazy/retinanet_R50_FPN_1x.py --num-gpus 8
#   python train_net.py --config-file ... model.cls_loss.gamma=1 train.output_dir=out/g1
from .common.coco import dataloader
from .common.focal_retinanet import model
from .common.schedule import lr_multiplier, optimizer, train
