#!/usr/bin/env bash
# One prepared GPU check (`make gpu-check`): on a CUDA machine, in one call of under 10 minutes,
#   1. the CUDA-only tests (tests/test_cuda.py: compiled Triton loss vs float64, model on CUDA vs
#      CPU, AMP step) and the loss in every dtype (tests/test_loss_dtypes.py: fp32/bf16/fp16 x
#      every gamma case on CUDA), with TRITON_INTERPRET=0 so the kernel is really compiled;
#   2. 100 iterations of AMP training on the built-in config in float16 (gradient scaler) and in
#      bfloat16, each then evaluated (COCO AP);
#   3. bench_losses, bench_model and bench_scales (Table 1e speed) on CUDA;
# writing JSON to benchmarks/results/ (gpu_check_*.json, bench_*_cuda.json) and logs to
# output/gpu_check/. Without CUDA it says so and exits 2. PYTHON selects the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
out=${GPU_CHECK_OUT:-output/gpu_check}
results=benchmarks/results
mkdir -p "$out" "$results"
if ! why=$("$py" -c "import torch; print(torch.cuda.is_available())" 2>&1) || [ "$why" != True ]; then
  echo "gpu-check: no CUDA device for $py (torch.cuda.is_available(): ${why##*$'\n'})" >&2
  exit 2
fi
"$py" -c "import torch; print('gpu-check on', torch.cuda.get_device_name(), 'torch', torch.__version__)"
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: run with a hard limit, log, remember failures
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$out/$name.log"
  echo "== $name: exit $rc in $((SECONDS - start)) s"
  [ $rc -eq 0 ] || status=1
  printf '{"step": "%s", "exit": %d, "seconds": %d}\n' "$name" $rc $((SECONDS - start)) \
    >> "$out/steps.jsonl"
}
rm -f "$out/steps.jsonl"
step cuda_tests 90 env TRITON_INTERPRET=0 "$py" -m pytest -q -m cuda tests/test_cuda.py -rs
step dtype_tests 90 env TRITON_INTERPRET=0 "$py" -m pytest -q tests/test_loss_dtypes.py -rs
for precision in float16 bfloat16; do
  step "amp_train_$precision" 110 "$py" train_net.py \
    --config-file configs/builtin/retinanet_R18_shapes.yaml --vis-images -1 MODEL.DEVICE cuda \
    SOLVER.AMP.ENABLED True SOLVER.AMP.PRECISION "$precision" SOLVER.MAX_ITER 100 \
    SOLVER.STEPS "(80,)" SOLVER.WARMUP_ITERS 20 SOLVER.CHECKPOINT_PERIOD 100 TEST.EVAL_PERIOD 0 \
    OUTPUT_DIR "$out/amp_train_$precision"
  cp "$out/amp_train_$precision/metrics.json" \
    "$results/gpu_check_amp_train_${precision}_metrics.json" 2>/dev/null
done
# One round each, as before rounds existed, within the hard limits above: these CUDA ratios
# check that the benchmarks run; a claim needs --rounds 3 (benchmarks/README.md).
step bench_losses 90 "$py" -m benchmarks.bench_losses --device cuda --rounds 1 --repeats 5 \
  --output "$results"
step bench_model 120 "$py" -m benchmarks.bench_model --device cuda --rounds 1 --repeats 3 \
  --no-torchvision --output "$results"
step bench_scales 80 "$py" -m benchmarks.bench_scales --device cuda --rounds 1 --repeats 5 \
  --output "$results"
cp "$out/steps.jsonl" "$results/gpu_check_steps.jsonl"
echo "gpu-check: $([ $status -eq 0 ] && echo all steps passed || echo some steps FAILED); logs in $out"
exit $status
