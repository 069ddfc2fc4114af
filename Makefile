# K-fold ensemble + TTA pipeline. Targets are files; the commands below only name them.
#
#   make folds train ensemble                 the whole job (embedded demo by default)
#   make init DATA=path/to/competition        write configs/<name>.yaml for your own data, then CONFIG=that
#   make folds train ensemble CONFIG=configs/mycomp.yaml SET="train.lr=3e-4 train.epochs=20"
#   make train FOLD=2                         build one fold (resumes a killed one)
#   make train ensemble SEEDS="0 1 2" SET=experiment=x   each fold once per seed, averaged within the fold
#   make retrain FOLD=2                       retrain one fold from scratch, then `make ensemble`
#   make bundle bundle-check [BUDGET=600 IMAGES=10000 DEVICE=cuda]   offline predict.py + weights, checked
#   make test                                 the test suite
#
# How Make knows what is up to date: `python -m pipeline resolve` runs first (at parse time,
# for pipeline goals) and writes outputs/<exp>/stamps/<stage>.json, each holding only the
# config keys that stage depends on, and stamps/{train,test}_images.json, the images the stages
# read (path, size, time), each rewritten only when it changes. Rules depend on their stage's
# stamps, so a voting change re-votes without retraining and a changed test image re-predicts.

SHELL := /bin/bash
.DELETE_ON_ERROR:
.SECONDARY:
.DEFAULT_GOAL := help

CONFIG ?= configs/demo.yaml
SET ?=
SEEDS ?=
FOLD ?=
GPUS ?=
EXPS ?=
BLEND_ARGS ?=
STACK_ARGS ?=
OUTPUT_DIR ?= outputs
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_OK := $(VENV)/.installed
PIPELINE := $(PY) -m pipeline
comma := ,
space := $(subst ,, )
# SEEDS="0 1 2" is the config key seeds: [0, 1, 2], given with the other overrides.
SET_ALL := $(strip $(SET) $(if $(strip $(SEEDS)),seeds=[$(subst $(space),$(comma),$(strip $(SEEDS)))]))

# ---- configuration → Make variables (only for goals that run the pipeline) -----------------
PIPELINE_GOALS := data check folds train retrain train-dask tune predict ensemble score validate eda report \
                  bundle bundle-check bundle-figures
ifneq ($(strip $(EXPS)),)
  PIPELINE_GOALS := $(filter-out ensemble score,$(PIPELINE_GOALS))  # a blend has no CONFIG to resolve
endif
# Make resolves the config (and writes its stamps) before it runs any goal, so `clean` in the same
# call would delete what the other goals were just given: it must run on its own.
ifneq ($(and $(filter clean,$(MAKECMDGOALS)),$(filter-out clean,$(MAKECMDGOALS))),)
  $(error `make clean` runs on its own: `make clean && make $(filter-out clean,$(MAKECMDGOALS))`)
endif
ifneq ($(filter $(PIPELINE_GOALS),$(MAKECMDGOALS)),)
  ifeq ($(wildcard $(VENV_OK)),)
    $(info [make] creating the virtual environment first (a few minutes, once))
    $(shell $(MAKE) --no-print-directory $(VENV_OK) >&2)
  endif
  # SET goes to the pipeline as ONE single-quoted word: no shell globbing or brace expansion of
  # values like [a, b] or {k: v}; the pipeline splits it into key=value overrides itself.
  RESOLVE_OUT := $(shell $(PIPELINE) resolve --config $(CONFIG) $(if $(SET_ALL),--set '$(subst ','\'',$(SET_ALL))') --make-vars)
  ifneq ($(.SHELLSTATUS),0)
    $(error stopped before any work ($(CONFIG)): see the message above)
  endif
  $(foreach assignment,$(RESOLVE_OUT),$(eval $(assignment)))
  STAMPS := $(EXP_DIR)/stamps
  FOLD_IDS := $(shell seq 0 $$(( $(K) - 1 )))
  FOLDS_SELECTED := $(if $(FOLD),$(FOLD),$(FOLD_IDS))
  WEIGHTS := $(foreach k,$(FOLDS_SELECTED),$(EXP_DIR)/fold_$(k)/weights.safetensors)
  TEST_PROBS := $(foreach k,$(FOLD_IDS),$(EXP_DIR)/fold_$(k)/test_probs.csv)
  # seeds: [..] trains each fold once per seed in seed_<s>/fold_<k>/; fold_<k>/ then holds their average.
  SEED_LIST := $(subst $(comma), ,$(SEED_IDS))
  ifneq ($(SEED_LIST),)
    WEIGHTS := $(foreach k,$(FOLDS_SELECTED),$(foreach s,$(SEED_LIST),$(EXP_DIR)/seed_$(s)/fold_$(k)/weights.safetensors))
  endif
  # pseudo.source: every fold's training part takes the list of the source's confident test images.
  PSEUDO_LIST := $(if $(PSEUDO_SOURCE_DIR),$(EXP_DIR)/pseudo_labels.csv)
  STAGE = $(PIPELINE) $(1) --config $(RESOLVED)
  # GPUS=0,1,2,3: fold k trains on GPU (k mod 4); with make -j4 that is one fold per GPU.
  PIN_GPU = $(if $(GPUS),gpus=($(subst $(comma), ,$(GPUS))); export CUDA_VISIBLE_DEVICES=$${gpus[$(1) % $${#gpus[@]}]};)
endif

.PHONY: help venv init data check folds train retrain train-dask tune predict ensemble score validate eda report blend stack test bench gpu-check gpu-rehearsal bench-leaks bench-scale auto-eval mutation docs docs-run report-png clean bundle bundle-check bundle-figures

help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'
	@echo "  variables: CONFIG=$(CONFIG)  SET=\"key=value ...\"  FOLD=k  GPUS=0,1,...  SEEDS=\"0 1 2\""

venv: $(VENV_OK) ## create the virtual environment from pyproject.toml

$(VENV_OK): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# ---- stages -------------------------------------------------------------------------------
init: | $(VENV_OK) ## write configs/<name>.yaml for a competition's folder: make init DATA=<folder> [OUT=...] [INIT_ARGS="--label species"]
	@test -n "$(DATA)" || { echo 'usage: make init DATA=<folder> [OUT=configs/<name>.yaml] [INIT_ARGS="--label species"]' >&2; exit 2; }
	$(PIPELINE) init '$(subst ','\'',$(DATA))' $(if $(OUT),--out '$(subst ','\'',$(OUT))') $(INIT_ARGS)

data: $(TRAIN_CSV) ## write the embedded demo dataset (demo configs only)

# Once the data exists, resolve again: the image manifests and the check against the real classes
# were written before the data existed.
ifeq ($(DEMO),1)
$(TRAIN_CSV): $(DATA_STAMP) | $(VENV_OK)
	$(call STAGE,demo-data)
	$(call STAGE,resolve) >/dev/null
endif
ifeq ($(MASK),1)
$(TRAIN_CSV): $(DATA_STAMP) $(subst $(comma), ,$(MASK_INPUTS)) | $(VENV_OK)
	$(call STAGE,mask-data)
	$(call STAGE,resolve) >/dev/null
endif

check: $(TRAIN_CSV) ## scan the data: every image once, every problem reported together
	$(call STAGE,check)

folds: $(FOLDS_FILE) ## assign stratified, grouped folds → folds/<name>.csv

$(FOLDS_FILE): $(TRAIN_CSV) $(FOLDS_STAMP) | $(VENV_OK)
	$(call STAGE,folds)

train: $(WEIGHTS) ## train every fold (or FOLD=k); a killed fold resumes

$(EXP_DIR)/fold_%/weights.safetensors: $(FOLDS_FILE) $(STAMPS)/train.json $(STAMPS)/train_images.json $(PSEUDO_LIST) | $(VENV_OK)
	$(call PIN_GPU,$*) $(call STAGE,train) --fold $*

# One seed of a seeds run: its own stamps (adding a seed retrains no other), the experiment's images and folds.
define SEED_RULES
$(EXP_DIR)/seed_$(1)/fold_%/weights.safetensors: $(FOLDS_FILE) $(EXP_DIR)/seed_$(1)/stamps/train.json $(STAMPS)/train_images.json $(PSEUDO_LIST) | $(VENV_OK)
	$$(call PIN_GPU,$$*) $$(call STAGE,train) --fold $$* --seed $(1)

$(EXP_DIR)/seed_$(1)/fold_%/test_probs.csv: $(EXP_DIR)/seed_$(1)/fold_%/weights.safetensors $(EXP_DIR)/seed_$(1)/stamps/predict.json $(STAMPS)/test_images.json
	$$(call STAGE,predict) --fold $$* --seed $(1)
endef
$(foreach s,$(SEED_LIST),$(eval $(call SEED_RULES,$(s))))

# wildcard: a missing source submission is the pseudo stage's error, which names it and says what to run
ifneq ($(PSEUDO_LIST),)
$(PSEUDO_LIST): $(wildcard $(PSEUDO_SOURCE_DIR)/submission.csv) $(FOLDS_FILE) $(STAMPS)/pseudo.json | $(VENV_OK)
	$(call STAGE,pseudo)
endif

retrain: ## retrain FOLD=k from scratch; its old weights are replaced only on success
	@test -n "$(FOLD)" || { echo "usage: make retrain FOLD=k" >&2; exit 2; }
	$(call STAGE,train) --fold $(FOLD) --force

train-dask: $(FOLDS_FILE) ## train folds on a Dask cluster (SCHEDULER=tcp://host:8786; default: a local one)
	$(call STAGE,train) --backend dask $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(FOLD),--fold $(FOLD))

tune: $(FOLDS_FILE) ## Optuna search (TRIALS=n STORAGE=url) → configs/<exp>-best.yaml
	$(call STAGE,tune) $(if $(TRIALS),--trials $(TRIALS)) $(if $(STORAGE),--storage $(STORAGE))

predict: $(TEST_PROBS) ## predict the test set with TTA, one file per fold

ifeq ($(SEED_LIST),)
$(EXP_DIR)/fold_%/test_probs.csv: $(EXP_DIR)/fold_%/weights.safetensors $(STAMPS)/predict.json $(STAMPS)/test_images.json
	$(call STAGE,predict) --fold $*
else
$(EXP_DIR)/fold_%/test_probs.csv: $(foreach s,$(SEED_LIST),$(EXP_DIR)/seed_$(s)/fold_%/test_probs.csv)
	$(call STAGE,merge-seeds) --fold $*
endif

ifneq ($(strip $(EXPS)),)
ensemble: blend
else
ensemble: $(EXP_DIR)/submission.csv ## vote the folds into outputs/<exp>/submission.csv
endif

blend: | $(VENV_OK) ## blend finished experiments (weights fitted on OOF): make ensemble EXPS="a b"
	@test -n "$(strip $(EXPS))" || { echo 'usage: make blend EXPS="exp_a exp_b" [BLEND_ARGS="--voting hard"]' >&2; exit 2; }
	$(PIPELINE) blend $(EXPS) --output-dir $(OUTPUT_DIR) $(BLEND_ARGS)

stack: | $(VENV_OK) ## stack finished experiments (logistic regression on OOF log-probabilities): make stack EXPS="a b"
	@test -n "$(strip $(EXPS))" || { echo 'usage: make stack EXPS="exp_a exp_b" [STACK_ARGS="--C 0.1"]' >&2; exit 2; }
	$(PIPELINE) stack $(EXPS) --output-dir $(OUTPUT_DIR) $(STACK_ARGS)

# wildcard: the demo's sample submission does not exist until `make data` writes it
$(EXP_DIR)/submission.csv: $(TEST_PROBS) $(STAMPS)/ensemble.json $(wildcard $(SAMPLE_SUBMISSION))
	$(call STAGE,ensemble)

eda: $(EXP_DIR)/eda/index.html ## EDA pages of the data and folds → outputs/<exp>/eda/index.html

$(EXP_DIR)/eda/index.html: $(FOLDS_FILE) $(STAMPS)/train.json $(RESOLVED) | $(VENV_OK)
	$(call STAGE,eda)

report: $(EXP_DIR)/report.html ## one self-contained HTML report of the run → outputs/<exp>/report.html

$(EXP_DIR)/report.html: $(EXP_DIR)/submission.csv $(RESOLVED) | $(VENV_OK)
	$(call STAGE,report)

ifneq ($(strip $(EXPS)),)
score: | $(VENV_OK)
	$(PIPELINE) score-blend $(EXPS) --output-dir $(OUTPUT_DIR)
else
score: $(EXP_DIR)/submission.csv ## score the submission on held-back labels (demo); EXPS="a b": their blend / stack
	$(call STAGE,score)
endif

validate: $(EXP_DIR)/submission.csv ## check the submission against the sample submission
	$(call STAGE,validate)

# ---- the offline bundle (competitions whose test images are hidden) -------------------------
BUDGET ?=
IMAGES ?=
bundle: $(EXP_DIR)/submission.csv | $(VENV_OK) ## offline predict.py + weights → outputs/<exp>/bundle/ (BUDGET=s IMAGES=n DEVICE=cuda)
	$(call STAGE,bundle) $(if $(BUDGET),--budget $(BUDGET)) $(if $(IMAGES),--images-count $(IMAGES)) $(if $(DEVICE),--device $(DEVICE))

bundle-check: $(EXP_DIR)/submission.csv | $(VENV_OK) ## run the bundle on the local test images (python -I) and compare with submission.csv (DEVICE=cuda)
	$(call STAGE,bundle-check) $(if $(DEVICE),--device $(DEVICE))

bundle-figures: $(EXP_DIR)/submission.csv | $(VENV_OK) ## the bundle's size and speed on this machine → docs/figures/bundle.json
	$(call STAGE,bundle)
	$(call STAGE,bundle-check) --record docs/figures/bundle.json

# ---- development --------------------------------------------------------------------------
DEVICE ?=
BENCH_ARGS ?=
bench: | $(VENV_OK) ## training/prediction efficiency vs the bare model → outputs/bench.json (DEVICE=cuda)
	$(PIPELINE) bench --out $(OUTPUT_DIR)/bench.json $(if $(DEVICE),--device $(DEVICE)) $(BENCH_ARGS)

gpu-rehearsal: $(VENV_OK) ## gpu-check's resume check rehearsed on the CPU through make (about 90 s; not in make test)
	$(PY) -m pytest -m rehearsal tests/test_gpu_check.py

gpu-check: | $(VENV_OK) ## on a CUDA machine: bench, the demo in fp32/bf16/fp16/compile, two folds on one GPU, resume (< 8 min) → outputs/gpu-check.json
	$(PIPELINE) gpu-check --out $(OUTPUT_DIR)/gpu-check.json

bench-leaks: | $(VENV_OK) ## the leak scan of one 100,000-image class: seconds and memory → outputs/leak_bench.json
	$(PY) -m pipeline.tools.leak_bench --images 100000 --out $(OUTPUT_DIR)/leak_bench.json

# Does `auto` earn its place? The demo, the odd/even demo and a long-tailed fashion-MNIST set (Debian's
# dataset-fashion-mnist) trained with best and last checkpoints, then every variant scored on held-back labels.
AUTO_EVAL_SET = ensemble.checkpoints=auto
auto-eval: | $(VENV_OK) ## plain vote vs auto vs each step forced on held-back labels (3 trainings, ~40 min) → docs/figures/auto_steps.json
	$(MAKE) folds train ensemble CONFIG=configs/demo.yaml SET="experiment=demo-auto $(AUTO_EVAL_SET)"
	$(MAKE) folds train ensemble CONFIG=configs/demo-odd.yaml SET="experiment=demo-odd-auto $(AUTO_EVAL_SET)"
	test -f data/fashion-lt/config.yaml || $(PY) -m pipeline.tools.fashion_lt --out data/fashion-lt
	$(MAKE) folds train ensemble CONFIG=data/fashion-lt/config.yaml SET="experiment=fashion-lt-auto $(AUTO_EVAL_SET)"
	$(PY) -m pipeline.tools.auto_eval --config $(OUTPUT_DIR)/demo-auto/config.yaml \
	  --config $(OUTPUT_DIR)/demo-odd-auto/config.yaml --config $(OUTPUT_DIR)/fashion-lt-auto/config.yaml \
	  --out docs/figures/auto_steps.json

SCALE_SIZES ?= 10000,30000,100000
SCALE_JPEG_SIZES ?= 30000
bench-scale: | $(VENV_OK) ## every stage's seconds, images/s and memory at 10k-100k images, log-log slopes (about an hour) → outputs/bench_scale.json
	$(PY) -m pipeline.tools.bench_scale --sizes $(SCALE_SIZES) --jpeg-sizes '$(SCALE_JPEG_SIZES)' --out $(OUTPUT_DIR)/bench_scale.json $(BENCH_SCALE_ARGS)

test: $(VENV_OK) ## the layer contract (pyproject.toml), unused names, then the test suite
	$(VENV)/bin/lint-imports
	$(PY) -m pyflakes pipeline tests
	$(PY) -m pytest

# The functions that decide the answer: folds, sampling, a fold's split and kept epoch, TTA merging,
# voting, logit adjustment, blending, the post-processing chain (its nested loop, the auto decisions, their
# noise, the submission record) and the submission. Not part of `make test` (16 min on 2 cores here).
# x* covers functions (x_name) and methods (xǁClassǁname).
MUTANTS := $(addsuffix __mutmut_*,\
  pipeline.data.folds.x_assign_folds pipeline.data.folds.x_training_indices_for_fold pipeline.data.folds.x__check_groups \
  pipeline.data.sampling.x_* pipeline.train.selection.x_* \
  pipeline.predict.tta.x_merge_view_logits pipeline.predict.tta.x_predict_tta pipeline.predict.tta.x_predict_tta_with_views \
  pipeline.predict.tta.x__view_logits pipeline.predict.tta.x__view_probs pipeline.predict.tta.x__hflip pipeline.predict.tta.x__vflip \
  pipeline.ensemble.voting.x_* pipeline.results.blend.x__blend_rows pipeline.results.blend.x_check_same_folds \
  pipeline.ensemble.chain.x* pipeline.ensemble.decide.x* pipeline.ensemble.gain.x* pipeline.ensemble.record.x* \
  pipeline.results.blend.x__concat_folds pipeline.results.submission.x_write_submission \
  pipeline.results.submission.x_validate_submission)
# ONLY='pipeline.ensemble.chain.x*' runs some functions alone and updates their modules' rows in the figure.
ONLY ?=
MUTANT_ARGS = $(if $(ONLY),$(foreach m,$(ONLY),'$(m)__mutmut_*'),$(foreach m,$(MUTANTS),'$(m)'))   # quoted: no globbing
mutation: $(VENV_OK) ## mutation testing of the answer-deciding functions (slow; ONLY=... for some) → docs/figures/mutation.json
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 2 $(MUTANT_ARGS)
	$(PY) -m pipeline.tools.mutation_score --out docs/figures/mutation.json $(if $(ONLY),--update) $(MUTANT_ARGS)

REPORT_EXP ?= demo-auto
report-png: ## the README's screenshot of a run report (REPORT_EXP=demo-auto, after make report) → docs/report.png
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,2400 \
	  --screenshot=docs/report.png file://$(CURDIR)/$(OUTPUT_DIR)/$(REPORT_EXP)/report.html

docs: | $(VENV_OK) ## rewrite the generated tables of README.md and docs/*.md from docs/figures/
	$(PY) -m pipeline.tools.docs

docs-run: | $(VENV_OK) ## measure the docs' figures from scratch (demo, bench, stack, the odd/even, leak and pseudo-label runs; 46 min on a 2-core AMD EPYC), then make docs
	$(PY) -m pipeline.tools.docs --run

clean: ## remove outputs/ and folds/ (keeps the virtual environment)
	rm -rf outputs/* outputs/.stamps folds/*.csv data/demo data/demo-odd data/mask_sample
