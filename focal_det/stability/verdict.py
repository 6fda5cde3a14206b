"""The stability check's verdict. Section 7 of docs/REPRODUCTION.md decides whether the curvature
bound or the LR range test predicts the measured divergence boundary within 2x for α-CE and FL;
only a predictor that passed gives a verdict. Neither passed (7.1: the bound is 28-80x too high
for α-CE and 32-43x for FL; the range test is within 2x for α-CE but 9.4x too high for FL), so
``PREDICTOR`` is None and the check reports its measurements without one."""
from typing import Dict, Optional

# Which measurement predicts the boundary ("lr_bound" or "lr_range_test"), set from Section 7's
# result; None: neither has been shown to (the check gives no verdict).
PREDICTOR: Optional[str] = None
EDGE = 2.0  # within this factor of the predicted boundary: "at the edge"
VERDICT = {"why_none": "neither the LR bound nor the range test predicted where training "
                       "diverges within 2x for both alpha-CE and FL (docs/REPRODUCTION.md 7.1)"}


def verdict(result: Dict, predictor: Optional[str] = None) -> Optional[Dict]:
    """stable / at the edge / above the bound by a factor, from ``predictor``'s LR against the
    config's base LR; None when no predictor is established or it measured nothing."""
    predictor = predictor or PREDICTOR
    if predictor is None:
        return None
    limit = result.get(predictor)
    if limit is None:
        return None
    ratio = result["lr_base"] / limit
    if ratio > 1.0:
        label = "above the bound"
    elif ratio > 1.0 / EDGE:
        label = "at the edge"
    else:
        label = "stable"
    return {"label": label, "ratio": ratio, "predictor": predictor,
            "reason": f"base LR {result['lr_base']:.3g} is {ratio:.2f}x the {predictor} "
                      f"{limit:.3g}"}
