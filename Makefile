# Every target is self-sufficient on a fresh machine with Python 3.11:
# it creates .venv and installs requirements when they are missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)
export TF_CPP_MIN_LOG_LEVEL ?= 2

SEED ?= 0
EPOCHS ?=
ROUNDS ?=
SITES ?= 3
SPLIT ?=
SEEDS ?=
STRATEGIES ?=
LABELS ?=
BACKBONE ?=
BACKBONE_INIT ?=
EXCHANGE ?=
# make simulate's active learning: on the built-in data each site starts with 10 % of
# its training images labeled and labels up to 30 % with `hybrid` (AL=none: every
# label; AL=random etc.); with SPLIT= the split's own labels unless AL= names a strategy
AL ?= $(if $(SPLIT),none,hybrid)
# the make command line as typed, recorded in a run's JSON (`run.command`, src/run_record.py)
MAKE_COMMAND = make $(MAKECMDGOALS)$(if $(MAKEOVERRIDES), $(MAKEOVERRIDES))
CENTRAL_MODEL := workspace/runs/central/model.keras
MODEL ?= $(CENTRAL_MODEL)

.PHONY: setup data splits train-central pretrain-backbone simulate al-experiment results test test-faults test-deploy bench bench-quality export-report clean

setup: $(STAMP)

# The pinned set is installed with uv (itself pinned, from PyPI into .venv): same
# packages as pip resolves from requirements.txt + constraints.txt, in 17 s instead of
# 62 s here (cold caches). Where uv cannot be installed, pip does it (INSTALLER=pip forces).
# Both write the packages' bytecode at install (uv only with --compile-bytecode, as pip
# does by default): without it every process compiles TensorFlow's and OpenFL's sources
# on import where Python may not cache them (PYTHONDONTWRITEBYTECODE, a read-only .venv).
UV_VERSION := 0.13.9
INSTALLER ?= uv
$(STAMP): requirements.txt constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$(INSTALLER)" = uv ] && $(PY) -m pip install --quiet uv==$(UV_VERSION); then \
		echo "installing requirements.txt with uv $(UV_VERSION)"; \
		$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) -r requirements.txt; \
	else \
		echo "installing requirements.txt with pip"; \
		$(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet -r requirements.txt; \
	fi
	touch $(STAMP)

data: setup
	$(PY) -m src.data.synthetic --out data/synthetic --seed $(SEED)

# The reference a federation compares with: the same images and the same labels as
# the sites of the split hold (default: data_splits/default), and like the default
# plan's backbone starting from the public checkpoint (BACKBONE_INIT=scratch: random).
train-central: setup
	$(PY) -m src.cli.train_central --seed $(SEED) $(if $(EPOCHS),--epochs $(EPOCHS)) --split $(or $(SPLIT),data_splits/default) \
		$(if $(BACKBONE),--backbone-mode $(BACKBONE)) $(if $(BACKBONE_INIT),--backbone-init $(BACKBONE_INIT))

# The "public" backbone checkpoint the federation starts from (shipped in git; this remakes it).
pretrain-backbone: setup
	$(PY) -m src.cli.pretrain_backbone

# A whole federation on this machine: real fx processes, real certificates
# -> workspace/runs/<date-time>/ (workspace/runs/latest): metrics.json, curves.png, ...
simulate: setup
	MAKE_COMMAND='$(MAKE_COMMAND)' $(PY) -m workspace.simulate --sites $(SITES) --seed $(SEED) $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(SPLIT),--split $(SPLIT)) \
		$(if $(LABELS),--labels $(LABELS)) $(if $(BACKBONE),--backbone-mode $(BACKBONE)) \
		$(if $(BACKBONE_INIT),--backbone-init $(BACKBONE_INIT)) $(if $(EXCHANGE),--exchange $(EXCHANGE)) \
		$(if $(filter-out none,$(AL)),--active-learning $(AL))

# Each active-learning strategy at the same labeling budget over seeds, vs every label
# (configs/al_experiment.yaml, or AL_CONFIG=configs/al_experiment_256.yaml; SEEDS=0,1,2
# STRATEGIES=random,hybrid override it) -> workspace/runs/al/{report.json,report.md,curves.png}
# (the config's `out:`). Finished runs are kept and reused.
al-experiment: setup
	MAKE_COMMAND='$(MAKE_COMMAND)' $(PY) -m workspace.al_experiment $(if $(AL_CONFIG),--config $(AL_CONFIG)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(STRATEGIES),--strategies $(STRATEGIES)) \
		$(if $(ROUNDS),--rounds $(ROUNDS))

# Issue 33's re-measurements (configs/paired_experiment.yaml, a reduced data set and 128 px,
# the default plan): per seed the default federation (hybrid active learning), with full
# exchange, with random picks, with every label, and the centralized trainer on the same
# labels; paired per-seed differences with 95 % t-intervals. SEEDS=0,1 ROUNDS= ARMS=
# override it -> workspace/runs/paired/{report.json,report.md}, docs/results/paired.md
# through `make results`. Finished runs are kept and reused.
.PHONY: paired-experiment
paired-experiment: setup
	MAKE_COMMAND='$(MAKE_COMMAND)' $(PY) -m workspace.paired_experiment $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(ARMS),--arms $(ARMS))

# Segmentation as a third task (configs/segmentation_experiment.yaml): per seed, on one 4-site
# split with a mask-only site, the 3-task federation and centralized trainer, the 2-task ones
# without the mask site, and a masks-only centralized model; paired differences (mIoU, mAP,
# accuracy). ~48 min a seed here; SEEDS=0 ARMS= override it -> workspace/runs/segmentation/,
# docs/results/segmentation.md through `make results`. Finished runs are kept and reused.
.PHONY: seg-experiment
seg-experiment: setup
	MAKE_COMMAND='$(MAKE_COMMAND)' $(PY) -m workspace.paired_experiment --config configs/segmentation_experiment.yaml \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(ARMS),--arms $(ARMS))

# Issue 31's measurements on a reduced federation (configs/privacy_experiment.yaml, or
# PRIVACY_CONFIG=): test quality without and with differential privacy at epsilon ~1, 4, 8,
# and one site attacking (x10, sign flip, backdoor) without and with the poisoning
# defence, 3 and 5 sites; SEEDS=0,1 ROUNDS= override it -> workspace/runs/privacy/report.json
# (the config's `out:`), docs/results/privacy.md through `make results`. Finished runs are kept.
.PHONY: privacy-experiment
privacy-experiment: setup
	MAKE_COMMAND='$(MAKE_COMMAND)' $(PY) -m workspace.privacy_experiment $(if $(PRIVACY_CONFIG),--config $(PRIVACY_CONFIG)) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(ROUNDS),--rounds $(ROUNDS))

# docs/results/*.md from the runs' JSON: the latest `make simulate` run, `make bench`,
# each `make al-experiment` config's report (a page whose JSON is missing is skipped)
results: setup
	$(PY) -m workspace.results

splits: setup
	$(PY) -m src.data.splits --sites $(SITES) --seed $(SEED)

test: setup
	$(PY) -m pytest -q -m "not faults and not slow and not deploy and not browser" --durations=15 tests

# Crashes, intruders, poisoned updates, interrupted writes, what a site sends
# (real fx processes and certificates), and the `slow` tests over a minute each (the
# shipped plan end to end, make simulate on real-format data, the server step and active
# learning over fx, a trained model's export quality, secure aggregation and a poisoning
# site over fx): 25-32 min here, so not part of `make test`.
test-faults: setup
	$(PY) -m pytest -q -m "(faults or slow) and not deploy and not browser" --durations=10 tests

# The runbook docs/deployment.md run as separate hosts: one folder and one network
# namespace per machine, every command read from the runbook (~3 min; needs root for
# `ip netns`, else every host runs on loopback and the output says so).
test-deploy: setup
	@command -v ip >/dev/null || { echo "installing iproute2 (ip netns)"; apt-get update -qq && apt-get install -y -qq iproute2; } || true
	$(PY) -m pytest -q -s -m deploy tests/test_deploy_hosts.py

# The labeling page of a site's active-learning queue (docs/labeling.md), on http://127.0.0.1:8765/:
# SITE= the site; LABEL_WORKSPACE= the folder its collaborator runs in (default: here);
# LABEL_ARGS= more options of `python -m src.cli.label serve` (--host 0.0.0.0 --token ..., --port, --queue).
.PHONY: label setup-browser test-browser
label: setup
	$(if $(SITE),,$(error name the site: make label SITE=site1))
	$(PY) -m src.cli.label serve --site $(SITE) --workspace $(or $(LABEL_WORKSPACE),.) $(LABEL_ARGS)

# Headless Chromium for the browser tests and screenshots: Debian's `chromium` package (root, apt),
# driven by playwright through its executable path; no browser is ever downloaded from elsewhere.
setup-browser:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# The labeling page in headless chromium over a queue a tiny federation site wrote, and the
# load time of a 100-image queue (~1 min here).
test-browser: setup setup-browser
	$(PY) -m pytest -q -m browser --durations=5 tests

# TensorBoard on the live view of a `make simulate` run (docs/monitoring.md): the event files its
# aggregator writes as rounds end. RUN= a run folder (default workspace/runs/latest, resolved when
# it starts), DASHBOARD_PORT= (default 6006); bound to localhost (an SSH tunnel reaches it from elsewhere).
.PHONY: dashboard
dashboard: setup
	@run=$$(readlink -f $(or $(RUN),workspace/runs/latest)); \
	test -d "$$run/workspace" || { echo "error: no make simulate run at $(or $(RUN),workspace/runs/latest) (make simulate first, or RUN=workspace/runs/<id>)"; exit 1; }; \
	echo "dashboard of $$run: http://localhost:$(or $(DASHBOARD_PORT),6006)/ (Ctrl-C stops it)"; \
	exec $(VENV)/bin/tensorboard --logdir "$$run/workspace/logs/tensorboard" --host localhost --port $(or $(DASHBOARD_PORT),6006)

bench: setup
	MAKE_COMMAND='$(MAKE_COMMAND)' $(PY) -m bench.run

# Test quality of the centralized detector trained from scratch on every label, at 5, 10
# and 15 minutes of wall time, median of 3 seeds (~48 min) -> bench/quality_vs_time.{json,png}
# (SEEDS=0 MINUTES=5 for a quick look; SET="training.ema_decay=0" compares a setting)
MINUTES ?= 5,10,15
comma := ,
bench-quality: setup
	MAKE_COMMAND='$(MAKE_COMMAND)' $(PY) -m bench.quality_vs_time --seeds $(or $(SEEDS),0$(comma)1$(comma)2) --minutes $(MINUTES) \
		$(foreach s,$(SET),--set $(s)) $(if $(OUT),--out $(OUT))

# make simulate's wall time and test quality, median of 3 seeds run one after the other
# (~30 min, alone on the machine) -> bench/simulate_time.json (SEEDS=0 for one)
.PHONY: bench-simulate
bench-simulate: setup
	MAKE_COMMAND='$(MAKE_COMMAND)' $(PY) -m bench.simulate_time --seeds $(or $(SEEDS),0$(comma)1$(comma)2)

# Export the model to every runtime and measure quality vs speed on the test split
# (trains the centralized reference first when it is the model asked for and missing).
export-report: setup
	@if [ ! -f "$(MODEL)" ] && [ "$(MODEL)" = "$(CENTRAL_MODEL)" ]; then $(MAKE) train-central; fi
	$(PY) -m src.deploy.export_report --model $(MODEL)

clean:
	rm -rf workspace/runs data/synthetic
