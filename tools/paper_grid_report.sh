# Sourced by tools/reproduce_paper.sh and tools/reproduce_paper_common_lr.sh: the report of one
# letters_paper grid (its table, Figure 4 from FL gamma 2's seed-0 model, the verdict and the
# paper's claims). Reads finished runs only. Uses the caller's PY, CFG, COMMON and ALL.
#   paper_grid_report GRID_DIR OUT_DIR [config overrides of the grid's runs...]
paper_grid_report() {
  local grid=$1 out=$2
  shift 2
  compgen -G "$grid/*/seed*/result.json" > /dev/null || return 0
  $PY tools/ablate.py --report-only "${COMMON[@]}" --only "${ALL[@]}" --seeds 0 1 \
    --output "$grid" "$@"
  local fig4=()
  if [ -f "$grid/fl_g2_a0.25/seed0/model_final.pth" ]; then
    $PY tools/loss_distribution.py --config-file "$CFG" \
      --weights "$grid/fl_g2_a0.25/seed0/model_final.pth" --output "$out/loss_distribution"
    fig4=(--figure4 "$out/loss_distribution/loss_distribution.json")
  fi
  $PY tools/paper_verdict.py --faithful "$grid" "${fig4[@]}" --output "$out/verdict"
}
