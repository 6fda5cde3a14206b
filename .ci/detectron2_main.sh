#!/usr/bin/env bash
# CI job: focal_det against Detectron2 main, built from source with its C++ extension, in its
# own environment with today's NumPy 2 / Pillow / OpenCV / setuptools, the plugin installed the
# way the README tells users who bring their own Detectron2; then the whole test suite.
#
# Usage: .ci/detectron2_main.sh [DETECTRON2_SOURCE]   (a source tree or .tar.gz; default: the
# upstream snapshot in ../shared/third_party). About 10 minutes on 2 cores, most of it compiling.
set -euo pipefail
cd "$(dirname "$0")/.."
src_arg=${1:-${DETECTRON2_SOURCE:-../shared/third_party/detectron2-main-02b5c4e2.tar.gz}}
venv=${D2MAIN_VENV:-.venv-d2main}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
# Today's stack: no NumPy/Pillow/OpenCV/setuptools pins (Detectron2 main needs none of them).
"$py" -m pip install --quiet torch==2.14.1 torchvision==0.29.1 "numpy>=2" pillow \
  opencv-python-headless setuptools ninja pytest faster-coco-eval onnx onnxruntime
# LVIS's evaluation API without its declared dependencies (requirements-nodeps.txt says why).
"$py" -m pip install --quiet --no-deps -r requirements-nodeps.txt
"$py" - <<'EOF'
import numpy, PIL, cv2, setuptools, torch
print(f"stack: numpy {numpy.__version__}, Pillow {PIL.__version__}, OpenCV {cv2.__version__}, "
      f"setuptools {setuptools.__version__}, torch {torch.__version__}")
EOF

stamp="$venv/.detectron2-source"
if [ "$(cat "$stamp" 2>/dev/null)" != "$src_arg" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if [ -d "$src_arg" ]; then
    src="$src_arg"
  else
    tar xzf "$src_arg" -C "$work"
    tops=("$work"/*)
    if [ ${#tops[@]} -ne 1 ]; then echo "$src_arg: expected one top folder" >&2; exit 1; fi
    src="${tops[0]}"
  fi
  echo "Building Detectron2 from $src_arg (C++ extension; several minutes)"
  MAX_JOBS=${MAX_JOBS:-2} "$py" -m pip install --quiet --no-build-isolation "$src"
  echo "$src_arg" > "$stamp"
fi

# The README's install for a user's own Detectron2.
"$py" -m pip install --quiet --no-build-isolation -e .
"$py" -m focal_det.collect_env
# Not from inside a Detectron2 source tree: it would shadow the installed package.
"$py" -m pytest -q -p no:cacheprovider tests -rs

# Detectron2's own LazyConfig trainer, from the same snapshot, trains a few iterations from our
# .py config as the README tells users to (the config imports focal_det, which registers it).
lazy_dir=$(mktemp -d)
if [ -d "$src_arg" ]; then
  cp "$src_arg/tools/lazyconfig_train_net.py" "$lazy_dir/"
else
  tar xzf "$src_arg" -C "$lazy_dir" --wildcards --strip-components=2 '*/tools/lazyconfig_train_net.py'
fi
timeout 900 "$py" "$lazy_dir/lazyconfig_train_net.py" \
  --config-file configs/lazy/retinanet_R18_shapes.py train.max_iter=5 train.eval_period=0 \
  "lr_multiplier.scheduler.milestones=[3,4]" lr_multiplier.scheduler.num_updates=5 \
  train.checkpointer.period=5 "train.output_dir=$lazy_dir/out" 2>&1 | tail -n 8
test -s "$lazy_dir/out/model_final.pth" || { echo "CI: lazyconfig_train_net.py wrote no model_final.pth" >&2; exit 1; }
echo "CI: Detectron2's tools/lazyconfig_train_net.py trained from configs/lazy/retinanet_R18_shapes.py"
rm -rf "$lazy_dir"
