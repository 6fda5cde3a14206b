"""Issue 37's report (docs/REPRODUCTION.md Section 7): the single-change runs' outcomes, the
measured boundaries, λmax at initialization, λmax along α-CE's first iterations against
2(1 + β)/η_t (a chart), the gradient cosines, and the prediction table with the 2x rule."""
import json
import math
import os
from typing import Dict, List, Optional

from .mechanism import ce_ladder, common_lr, fl_ladder, measured_boundary
from .mechanism_grid import BASE_LR

FL_AT_BASE = "fl_g2_a0.25 at the config's LR (Section 6.11)"


def read_runs(runs_dir: str) -> Dict[str, List[dict]]:
    out = {}
    if not os.path.isdir(runs_dir):
        return out
    for name in sorted(os.listdir(runs_dir)):
        rs = []
        for seed in (0, 1):
            path = os.path.join(runs_dir, name, f"seed{seed}", "result.json")
            if os.path.exists(path):
                with open(path) as f:
                    rs.append(json.load(f))
        if rs:
            out[name] = rs
    return out


def _read(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _outcome(r: dict) -> str:
    if r.get("status") == "diverged":
        return f"NaN at {r['diverged_at']}"
    return f"finite ({r.get('AP', float('nan')):.1f} AP)"


def within_2x(predicted: Optional[float], measured: Optional[dict]) -> Optional[bool]:
    """The rule: 0.5 <= predicted / measured <= 2; a measured "at least" boundary only says
    whether the prediction is far below it (None: cannot be decided)."""
    if predicted is None or measured is None or not math.isfinite(predicted):
        return None
    ratio = predicted / measured["lr"]
    if measured["kind"] == "at least":
        return False if ratio < 0.5 else None
    return 0.5 <= ratio <= 2


def summarize(runs_dir: str, probe_dir: str, checks: Dict[str, str]) -> Dict:
    """``checks``: loss name -> the stability check's JSON of that loss."""
    runs = read_runs(runs_dir)
    ce_b = measured_boundary(runs, ce_ladder(0.75))
    # FL γ 2 trains at the config's LR on both seeds (6.11): the ladder's first rung
    fl_runs = {**runs, FL_AT_BASE: [{"status": "ok"}, {"status": "ok"}]}
    fl_b = measured_boundary(fl_runs, [(BASE_LR, FL_AT_BASE)] + fl_ladder())
    init = _read(os.path.join(probe_dir, "init.json"))
    traj = _read(os.path.join(probe_dir, "trajectory_ce_a0.75_seed0.json"))
    free = _read(os.path.join(probe_dir, "checks.json"))
    stab = {k: _read(v) for k, v in checks.items()}
    pred = {}
    for name, boundary in (("ce_a0.75", ce_b), ("fl_g2_a0.25", fl_b)):
        spectra = ((init or {}).get("losses", {}).get(name) or {}).get("spectra", {})
        at_init = (spectra.get("total") or {}).get("lr_bound")
        along = traj.get("lr_bound_min") if (traj and name == "ce_a0.75") else None
        rt = (stab.get(name) or {}).get("lr_range_test")
        pred[name] = {"measured": boundary, "bound_init": at_init, "bound_min_along": along,
                      "range_test": rt,
                      "rule": {k: within_2x(v, boundary) for k, v in
                               (("bound_init", at_init), ("bound_min_along", along),
                                ("range_test", rt))}}
    return {"runs": runs, "ce_boundary": ce_b, "fl_boundary": fl_b,
            "ce_boundaries": {a: measured_boundary(runs, ce_ladder(a)) for a in (0.25, 0.5, 0.75)},
            "common_lr": common_lr(runs), "init": init,
            "trajectory": traj, "free_checks": free, "stability_checks": stab,
            "prediction": pred}


def _g(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def markdown(s: Dict) -> str:
    lines = ["| run | seed 0 | seed 1 |", "|---|---|---|"]
    for name, rs in s["runs"].items():
        cells = [_outcome(r) for r in rs] + ["not run"] * (2 - len(rs))
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines += ["", "| loss | measured boundary | 2(1+β)/λmax at init | min along it. 0-20 | "
              "range test | within 2x (init / along / range) |", "|---|---|---|---|---|---|"]
    for name, p in s["prediction"].items():
        m = p["measured"]
        mtxt = "-" if m is None else f"{m['lr']:.3g}" + (" (at least)" if m["kind"] ==
                                                          "at least" else "")
        rule = " / ".join(_g(p["rule"][k]) for k in ("bound_init", "bound_min_along",
                                                      "range_test"))
        lines.append(f"| {name} | {mtxt} | {_g(p['bound_init'])} | {_g(p['bound_min_along'])}"
                     f" | {_g(p['range_test'])} | {rule} |")
    cb = s.get("ce_boundaries") or {}
    lines += ["", "α-CE boundaries (both seeds finite to 500): " + ", ".join(
        f"α {a}: {_g(b['lr']) if b else 'none in the ladder'}" for a, b in cb.items())
        + f"; Section 7.2's common LR: {_g(s.get('common_lr'))}"]
    if s["init"]:
        lines += ["", "| loss (init) | λmax total | cls | box | backbone | fpn | cls_subnet | "
                  "box_subnet |", "|---|---|---|---|---|---|---|---|"]
        for name, d in s["init"]["losses"].items():
            sp = d["spectra"]
            cells = [_g((sp.get(k) or {}).get("lambda_max")) for k in
                     ("total", "cls", "box", "backbone", "fpn", "cls_subnet", "box_subnet")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    t = s["trajectory"]
    if t:
        lines += ["", "| iteration | LR η_t | λmax (± residual) | λmax cls | λmin | "
                  "η_t·λmax (unstable > 2(1+β)) |", "|---|---|---|---|---|---|"]
        for x in t["lambda"]:
            tot = x["spectra"]["total"]
            lines.append(f"| {x['iteration']} | {x['lr']:.3g} | {x['lambda_max']:.3g} "
                         f"(± {tot['residual']:.2g}) | {x['lambda_max_cls']:.3g} | "
                         f"{tot['lambda_min']:.3g} | {x['eta_lambda']:.3g} |")
        lines += ["", "| iteration | loss | cos FPN | cos class subnet | ‖g‖ FPN | ‖g‖ cls |",
                  "|---|---|---|---|---|---|"]
        for r in t["rows"]:
            lines.append(f"| {r['iteration']} | {r['loss']:.4g} | {_g(r['cos_fpn'])} | "
                         f"{_g(r['cos_cls_subnet'])} | {r['grad_norm_fpn']:.3g} | "
                         f"{r['grad_norm_cls_subnet']:.3g} |")
    return "\n".join(lines) + "\n"


def plot(s: Dict, path: str) -> None:
    t = s["trajectory"]
    if not t:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    its = [x["iteration"] for x in t["lambda"]]
    a.semilogy(its, [x["lambda_max"] for x in t["lambda"]], "o-", label="λmax (whole loss)")
    a.semilogy(its, [x["lambda_max_cls"] for x in t["lambda"]], "s--", label="λmax (loss_cls)")
    a.semilogy(its, [abs(x["spectra"]["total"]["lambda_min"]) for x in t["lambda"]], "v-.",
               label="|λmin| (whole loss)")
    a.semilogy(its, [x["bound_at_lr"] for x in t["lambda"]], "k:", label="2(1+β)/η_t")
    a.set_xlabel("iteration")
    a.set_title("α-CE α .75: sharpness against the step size")
    a.legend()
    rows = t["rows"]
    b.plot([r["iteration"] for r in rows], [r["cos_fpn"] for r in rows], "o-", label="FPN")
    b.plot([r["iteration"] for r in rows], [r["cos_cls_subnet"] for r in rows], "s-",
           label="class subnet")
    b.axhline(0, color="gray", lw=0.5)
    b.set_ylim(-1.05, 1.05)
    b.set_xlabel("iteration")
    b.set_title("cosine of consecutive gradients")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
