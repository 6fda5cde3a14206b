#!/usr/bin/env bash
# docs/REPRODUCTION.md, Section 7.2 (issue 37 item 4): 6.11's grid at one LR where every alpha-CE
# stays finite (Section 7's measured common LR, docs/results/mechanism.json), 1,000 iterations,
# bf16 autocast, seeds 0 and 1 side by side (one thread each), a paired fp32 FL gamma 2 run, then
# the verdict by 6.11's rules, Figure 4 and the AP-against-iteration chart.
#   bash tools/reproduce_paper_common_lr.sh                  # trains what has not finished
#   REPORT_ONLY=1 bash tools/reproduce_paper_common_lr.sh    # the report only, nothing trained
# Every step resumes (ablate.py): finished runs are never repeated.
set -euo pipefail
# shellcheck source=tools/paper_grid_report.sh
source "$(dirname "$0")/paper_grid_report.sh"
PY=${PYTHON:-python}
OUT=${OUT:-output}
CFG=configs/builtin/retinanet_R18_letters_paper.yaml
PRE=$OUT/pretrain_R18_glyphs
V3=$OUT/paper_common_lr
LR=$($PY -c "import json; print(json.load(open('docs/results/mechanism.json')).get('common_lr'))")
if [ "$LR" = None ]; then
  echo "docs/results/mechanism.json has no common_lr (Section 7.2: no LR of Section 7's sweep" \
    "has every alpha-CE finite, or make mechanism has not measured it): nothing to run" >&2
  [ "${REPORT_ONLY:-0}" = 1 ] && exit 0
  exit 1
fi
COMMON=(--config-file "$CFG" --grid letters_paper --iters 1000 --eval-points 4 --warmup config)
OPTS=(MODEL.WEIGHTS "$PRE/backbone.pth" MODEL.FOCAL_DET.GRAD_STATS_ITERS 100 SOLVER.BASE_LR "$LR")
BF16=(SOLVER.AMP.ENABLED True)
ORDER=("ce_a0.25 ce_a0.50 ce_a0.75 ce_noprior" "fl_g2_a0.25" "fl_g0.5_a0.50"
       "flstar_g2_b1 flstar_g4_b0" "fl_g1_a0.25" "fl_g5_a0.25")
# shellcheck disable=SC2206
ALL=(${ORDER[*]})
diverged() { $PY -c "import json, sys; sys.exit(json.load(open(sys.argv[1])).get('status') != 'diverged')" "$1"; }

if [ "${REPORT_ONLY:-0}" != 1 ]; then
  [ -f "$PRE/backbone.pth" ] || $PY tools/pretrain_backbone.py --output "$PRE" --resume
  mkdir -p "$V3/grid" "$V3/fp32"
  echo "Section 7.2: the grid at LR $LR (bf16), output $V3"
  seed_worker() {
    local seed=$1 group name
    for group in "${ORDER[@]}"; do
      # shellcheck disable=SC2086
      OMP_NUM_THREADS=1 $PY tools/ablate.py "${COMMON[@]}" --only $group --seeds "$seed" \
        --output "$V3/grid" "${OPTS[@]}" "${BF16[@]}" || return 1
    done
    # an alpha-CE that went NaN under bf16 where fp32 stayed finite: rerun in fp32 (7.2)
    for name in ce_a0.25 ce_a0.50 ce_a0.75; do
      if diverged "$V3/grid/$name/seed$seed/result.json"; then
        OMP_NUM_THREADS=1 $PY tools/ablate.py "${COMMON[@]}" --only $name --seeds "$seed" \
          --output "$V3/fp32" "${OPTS[@]}" || return 1
      fi
    done
    if [ "$seed" = 0 ]; then  # the paired fp32 run of FL gamma 2
      OMP_NUM_THREADS=1 $PY tools/ablate.py "${COMMON[@]}" --only fl_g2_a0.25 --seeds 0 \
        --output "$V3/fp32" "${OPTS[@]}" || return 1
    fi
  }
  seed_worker 0 > "$V3/seed0.log" 2>&1 & p0=$!
  seed_worker 1 > "$V3/seed1.log" 2>&1 & p1=$!
  r0=0 r1=0
  wait $p0 || r0=$?
  wait $p1 || r1=$?
  if [ $r0 != 0 ] || [ $r1 != 0 ]; then
    echo "reproduce_paper_common_lr: a run failed (exit $r0, $r1); see $V3/seed0.log, $V3/seed1.log" >&2
    tail -5 "$V3/seed0.log" "$V3/seed1.log" >&2
    failed=1
  fi
fi

paper_grid_report "$V3/grid" "$V3" "${OPTS[@]}" "${BF16[@]}"
if compgen -G "$V3/fp32/*/seed*/result.json" > /dev/null; then
  $PY tools/ablate.py --report-only "${COMMON[@]}" --only fl_g2_a0.25 ce_a0.25 ce_a0.50 ce_a0.75 \
    --seeds 0 1 --output "$V3/fp32" "${OPTS[@]}"
fi
exit "${failed:-0}"
