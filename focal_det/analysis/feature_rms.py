"""The signal a detector passes on at initialization (``tools/paper_diagnosis.py rms``): the RMS
of the backbone's res3-res5, the FPN's P3-P7, the head's class and box towers and the class
logits' spread, on a batch of training images, for the pretrained backbone with freshly
initialized FPN and head (issue 28: is what reaches the head at 64 channels what the paper's
initialization assumed?)."""
import math
from typing import Dict, List

import torch


def rms(x: torch.Tensor) -> float:
    return float(x.detach().float().pow(2).mean().sqrt())


def _cat_rms(xs: List[torch.Tensor]) -> float:
    total = sum(float(x.detach().float().pow(2).sum()) for x in xs)
    return math.sqrt(total / sum(x.numel() for x in xs))


@torch.no_grad()
def feature_rms(model, batch: List[dict]) -> Dict[str, float]:
    """RMS of every stage on ``batch`` (dataset dicts mapped for training): ``input`` (the
    normalized image), the bottom-up's outputs (``res3``...), the FPN's (``p3``...), the towers'
    outputs over all levels (``cls_tower``, ``box_tower``), and the class logits' standard
    deviation (``logits_std``) and mean (``logits_mean``). In training mode, as the first
    training step sees them (frozen BN is the same either way)."""
    model.train()
    images = model.preprocess_image(batch)
    x = images.tensor
    out = {"input": rms(x)}
    bottom = model.backbone.bottom_up(x)
    out.update({k: rms(v) for k, v in sorted(bottom.items())})
    features = model.backbone(x)
    out.update({k: rms(v) for k, v in sorted(features.items())})
    levels = [features[f] for f in model.head_in_features]
    cls_tower = [model.head.cls_subnet(f) for f in levels]
    box_tower = [model.head.bbox_subnet(f) for f in levels]
    out["cls_tower"] = _cat_rms(cls_tower)
    out["box_tower"] = _cat_rms(box_tower)
    logits = torch.cat([model.head.cls_score(t).flatten() for t in cls_tower]).float()
    out["logits_std"] = float(logits.std())
    out["logits_mean"] = float(logits.mean())
    return out


def training_batch(cfg, num_images: int) -> List[dict]:
    """The first ``num_images`` images of ``DATASETS.TRAIN[0]`` through the training mapper
    (the config's training resize and flips, either config kind; the letters recipes flip
    nothing)."""
    from detectron2.data import DatasetMapper, get_detection_dataset_dicts

    from ..data import prepare_datasets
    from ..lazy_run import train_augmentations

    name = cfg.DATASETS.TRAIN[0]
    prepare_datasets([name])
    dicts = get_detection_dataset_dicts([name], filter_empty=False)[:num_images]
    if not dicts:
        raise ValueError(f"dataset {name!r} has no images")
    mapper = DatasetMapper(cfg, is_train=True, augmentations=train_augmentations(cfg))
    return [mapper(d) for d in dicts]


def variant_config(config_file: str, opts, width: int, head_weight_init: str):
    """``config_file`` (either kind) on the CPU with the FPN and head ``width`` and the head's
    weight init changed: a ``.yaml`` through ``MODEL.FPN.OUT_CHANNELS`` and
    ``MODEL.FOCAL_DET.HEAD.WEIGHT_INIT``, a ``.py`` through ``model.backbone.out_channels``,
    every ``model.head.input_shape``'s channels, ``model.head.conv_dims`` and
    ``model.head_weight_init``; returned as the engine reads it (``cli.load_run_config``)."""
    from ..cli import is_lazy_config, load_config, load_run_config

    if not is_lazy_config(config_file):
        return load_run_config(config_file, list(opts) + [
            "MODEL.FPN.OUT_CHANNELS", str(width), "MODEL.FOCAL_DET.HEAD.WEIGHT_INIT",
            head_weight_init], device="cpu")
    head = load_config(config_file, opts).model.head
    dims = ",".join([str(width)] * len(head.conv_dims))
    return load_run_config(config_file, list(opts) + [
        f"model.backbone.out_channels={width}", f"model.head.conv_dims=[{dims}]",
        f"model.head_weight_init={head_weight_init}",
        *(f"model.head.input_shape.{i}.channels={width}" for i in range(len(head.input_shape)))],
        device="cpu")


def measure(cfg, weights: str, batch: List[dict], seed: int = 0) -> Dict[str, float]:
    """Build ``cfg``'s model with RNG seed ``seed`` (the FPN's and head's initial weights),
    load ``weights`` (e.g. the pretrained backbone; "" keeps the initialization) as training
    does, and return :func:`feature_rms` on ``batch``."""
    from detectron2.utils.env import seed_all_rng

    from ..checkpoint import FocalCheckpointer
    from ..inference import inference_spec

    seed_all_rng(seed)
    model = inference_spec(cfg).build_model()
    if weights:
        FocalCheckpointer(model).load(weights, checkpointables=[])
    return feature_rms(model, batch)


def mean_over_seeds(per_seed: List[Dict[str, float]]) -> Dict[str, float]:
    return {k: sum(r[k] for r in per_seed) / len(per_seed) for k in per_seed[0]}


def markdown(rows: List[dict]) -> str:
    keys = [k for k in rows[0]["rms"]]
    lines = ["| variant | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for r in rows:
        lines.append(f"| {r['label']} | " + " | ".join(f"{r['rms'][k]:.3g}" for k in keys) + " |")
    return "\n".join(lines) + "\n"
