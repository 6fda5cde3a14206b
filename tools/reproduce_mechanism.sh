#!/usr/bin/env bash
# docs/REPRODUCTION.md Section 7 (issue 37): why alpha-CE diverges, measured. The single-change
# runs (tools/mechanism_runs.py: the LR sweep from the top, the single changes, FL gamma 2
# upward, the other alpha-CEs at the candidate LRs; seeds side by side, one thread each), the
# lambda_max probes (tools/mechanism_probe.py) and the stability check of alpha-CE .75 and FL
# gamma 2, then the report (tools/mechanism_report.py). Every piece resumes: finished runs and
# probes are read, an interrupted run continues from its checkpoint.
#   make mechanism                                   # what has not finished, then the report
#   REPORT_ONLY=1 bash tools/reproduce_mechanism.sh  # the report from finished pieces only
set -euo pipefail
PY=${PYTHON:-python}
OUT=${OUT:-output}
CFG=configs/builtin/retinanet_R18_letters_paper.yaml
PRE=$OUT/pretrain_R18_glyphs
M=$OUT/mechanism
K=MODEL.FOCAL_DET.CLS_LOSS
if [ "${REPORT_ONLY:-0}" != 1 ]; then
  if [ ! -f "$PRE/backbone.pth" ]; then
    $PY tools/pretrain_backbone.py --output "$PRE" --resume
  fi
  mkdir -p "$M"
  OMP_NUM_THREADS=1 $PY tools/mechanism_runs.py --parallel --output "$M/runs" \
    MODEL.WEIGHTS "$PRE/backbone.pth" > "$M/runs.log" 2>&1 & runs=$!
  (OMP_NUM_THREADS=1 $PY tools/mechanism_probe.py --output "$M/probe" MODEL.WEIGHTS "$PRE/backbone.pth"
   for loss in "ce_a0.75 BalancedCrossEntropy $K.ALPHA 0.75" "fl_g2 FocalLoss $K.GAMMA 2.0 $K.ALPHA 0.25"; do
     set -- $loss
     [ -f "$M/check_$1.json" ] || OMP_NUM_THREADS=1 $PY -m focal_det.stability --config-file "$CFG" \
       --json "$M/check_$1.json" MODEL.WEIGHTS "$PRE/backbone.pth" "$K.NAME" "$2" "${@:3}"
   done) > "$M/probe.log" 2>&1 & probes=$!
  wait $runs
  wait $probes
fi
$PY tools/mechanism_report.py --runs "$M/runs" --probe "$M/probe" \
  --check "ce_a0.75=$M/check_ce_a0.75.json" --check "fl_g2_a0.25=$M/check_fl_g2.json" \
  --output "$M/report"
