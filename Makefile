# focal_det: `make demo` trains + evaluates on the built-in dataset, `make test` runs the tests.
# Both create a project-local virtual environment (.venv) on first use; later runs reuse it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.focal_det-installed
DEMO_OUT ?= output/demo
# A Detectron2 source tree or .tar.gz to build instead of v0.6 (e.g. upstream main), for a new
# .venv: make clean-venv test DETECTRON2_SOURCE=/path/to/detectron2
export DETECTRON2_SOURCE

.PHONY: mechanism mechanism-report demo test test-slow test-fast gpu-check env bench bench-model bench-scales plots ablate ablate-letters pretrain reproduce-paper paper-report reproduce-paper-6it imbalance \
	easy-negatives loss-distribution amp-accuracy clean-venv

# Re-installs only when the pins, the Detectron2 installer, setup.py or the C++ loss change.
$(STAMP): requirements.txt requirements-nodeps.txt tools/install_detectron2.py setup.py $(wildcard focal_det/kernels/csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import focal_det, detectron2.modeling, torchvision; print('focal_det environment ready')"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) train_net.py --config-file configs/builtin/retinanet_R18_shapes.yaml --vis-images 12 \
		--keep-checkpoints 1 OUTPUT_DIR $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# On a CUDA machine: CUDA tests, 100 AMP iterations, CUDA benchmarks -> benchmarks/results/.
gpu-check: $(STAMP)
	PYTHON=$(PY) bash tools/gpu_check.sh

env: $(STAMP)
	$(PY) -m focal_det.collect_env

# Each benchmark: 3 rounds (the default), the JSON and its median [min-max] table to
# benchmarks/results (the README's commands; run them on an idle machine, one at a time).
bench: $(STAMP)
	$(PY) -m benchmarks.bench_losses --repeats 7 --output benchmarks/results

# The paper's Table 1e speed measure (R-50/R-101 at 400-800 px), ours vs Detectron2.
bench-scales: $(STAMP)
	$(PY) -m benchmarks.bench_scales --repeats 3 --output benchmarks/results

bench-model: $(STAMP)
	$(PY) -m benchmarks.bench_model --repeats 5 --output benchmarks/results

# The paper's Table 1a/1b + CE without prior + Table 3 on the built-in dataset (docs/REPRODUCTION.md).
ablate: $(STAMP)
	$(PY) tools/ablate.py --iters 500 --seeds 0 1 --output output/ablation

# The same grid on the imbalanced letters dataset, AP at 4 points of every run (docs/REPRODUCTION.md).
ablate-letters: $(STAMP)
	$(PY) tools/ablate.py --config-file configs/builtin/retinanet_R18_letters.yaml --grid letters \
		--iters 1200 --eval-points 4 --seeds 0 1 --output output/ablation_letters

# The backbone of the paper-faithful recipe: R18 pretrained on generated images (~25 min on 2
# cores; resumes). The recipe is the tool's defaults (focal_det.pretrain.train.Settings).
pretrain: $(STAMP)
	$(PY) tools/pretrain_backbone.py --output output/pretrain_R18_glyphs --resume

# docs/REPRODUCTION.md Section 6.11: the paper's grid on the corrected recipe, its verdict, the
# paper's claims, Figure 4 and the untested departures (about 2-3.5 h on 2 cores after the backbone);
# then Section 7.2: the same grid at the one LR where every alpha-CE trains (bf16; Section 7's
# common LR from docs/results/mechanism.json). Both resume where they stopped.
# paper-report: every table and figure again from finished runs.
reproduce-paper: $(STAMP)
	PYTHON=$(PY) bash tools/reproduce_paper.sh
	PYTHON=$(PY) bash tools/reproduce_paper_common_lr.sh

paper-report: $(STAMP)
	REPORT_ONLY=1 PYTHON=$(PY) bash tools/reproduce_paper.sh
	REPORT_ONLY=1 PYTHON=$(PY) bash tools/reproduce_paper_common_lr.sh

# docs/REPRODUCTION.md Section 7 (issue 37): why alpha-CE diverges, measured (lambda_max probes,
# the single-change runs, the stability check of alpha-CE and FL; resumes where it stopped).
mechanism: $(STAMP)
	PYTHON=$(PY) bash tools/reproduce_mechanism.sh

mechanism-report: $(STAMP)
	REPORT_ONLY=1 PYTHON=$(PY) bash tools/reproduce_mechanism.sh

# Sections 6.3-6.8 as they ran (the Section 6 config, 6-iteration warm-up; ~2.5 h).
reproduce-paper-6it: $(STAMP)
	PYTHON=$(PY) bash tools/reproduce_paper_6it.sh

imbalance: $(STAMP)
	$(PY) tools/imbalance.py --config-file configs/builtin/retinanet_R18_shapes.yaml \
		--config-file configs/builtin/retinanet_R18_letters.yaml --output output/imbalance

easy-negatives: $(STAMP)
	$(PY) tools/easy_negatives.py --config-file configs/builtin/retinanet_R18_letters.yaml \
		--model init=init \
		--model ce_noprior_1200it=output/ablation_letters/ce_noprior/seed0/model_final.pth \
		--model fl_g2_1200it=output/ablation_letters/fl_g2_a0.25/seed0/model_final.pth \
		--loss CE=0,-1 --loss FL_g2_a0.25=2,0.25 --output output/easy_negatives

loss-distribution: $(STAMP)
	$(PY) tools/loss_distribution.py --config-file configs/builtin/retinanet_R18_shapes.yaml \
		--weights output/ablation/fl_g2_a0.25/seed0/model_final.pth --output output/loss_distribution

plots: $(STAMP)
	$(PY) tools/plot_losses.py --output docs/figures

clean-venv:
	rm -rf $(VENV)

# Issue 29's accuracy check (~25 min on 2 idle cores): the demo config trained in fp32 and with
# bf16 autocast (same seed), the fp32 model evaluated under bf16; JSON to benchmarks/results/.
AMP_OUT ?= output/amp_acc
amp-accuracy: $(STAMP)
	$(PY) train_net.py --config-file configs/builtin/retinanet_R18_shapes.yaml --vis-images -1 \
		--resume OUTPUT_DIR $(AMP_OUT)/fp32
	$(PY) train_net.py --config-file configs/builtin/retinanet_R18_shapes.yaml --vis-images -1 \
		--resume SOLVER.AMP.ENABLED True OUTPUT_DIR $(AMP_OUT)/bf16
	$(PY) train_net.py --config-file configs/builtin/retinanet_R18_shapes.yaml --eval-only \
		--vis-images -1 MODEL.WEIGHTS $(AMP_OUT)/fp32/model_final.pth \
		MODEL.FOCAL_DET.INFERENCE_PRECISION bfloat16 OUTPUT_DIR $(AMP_OUT)/fp32_eval_bf16
	$(PY) tools/amp_accuracy.py $(AMP_OUT) --output benchmarks/results
