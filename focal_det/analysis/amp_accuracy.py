"""Issue 29's accuracy check, read from finished runs: the built-in demo config trained in fp32
and with bf16 autocast (same seed), and the fp32 model evaluated under bf16
(``make amp-accuracy`` runs them into one folder: ``fp32/``, ``bf16/``, ``fp32_eval_bf16/``)."""
import os
import re

from ..utils.metrics import read_metrics

__all__ = ["collect"]

_COPYPASTE = re.compile(r"copypaste: ([0-9.]+),([0-9.]+),([0-9.]+),")


def _final_bbox(run: str) -> dict:
    rows = [r for r in read_metrics(run) if "bbox/AP" in r]
    if not rows:
        raise FileNotFoundError(f"{run}: no evaluation in metrics.json (not finished?)")
    losses = [r["total_loss"] for r in read_metrics(run) if "total_loss" in r]
    return {"iteration": rows[-1]["iteration"], "AP": rows[-1]["bbox/AP"],
            "AP50": rows[-1]["bbox/AP50"], "logged_losses": len(losses),
            "max_total_loss": max(losses) if losses else None}


def _eval_only_ap(run: str) -> dict:
    with open(os.path.join(run, "log.txt")) as f:
        found = _COPYPASTE.findall(f.read())
    if not found:
        raise FileNotFoundError(f"{run}/log.txt: no COCO result line")
    ap, ap50, _ = map(float, found[-1])
    return {"AP": ap, "AP50": ap50}


def collect(folder: str) -> dict:
    fp32, bf16 = _final_bbox(os.path.join(folder, "fp32")), _final_bbox(os.path.join(folder, "bf16"))
    evaluated = _eval_only_ap(os.path.join(folder, "fp32_eval_bf16"))
    return {"fp32_training": fp32, "bf16_training": bf16, "fp32_model_bf16_evaluation": evaluated,
            "bf16_training_minus_fp32_AP": bf16["AP"] - fp32["AP"],
            "bf16_evaluation_minus_fp32_AP": evaluated["AP"] - fp32["AP"]}
