# Everything a user or CI runs. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/tnews_answer.yaml
# The bench keeps the seed's shapes (batch 8, titles up to 128 tokens): docs/performance.md's numbers are on them.
BENCH_CONFIG ?= configs/tnews_lora_vs_full.yaml

COMPOSE ?= docker compose
# The containers run as the owner of $(REPORTS_DIR) (you; UID 1000 when it is root's), never as root.
REPORTS_DIR ?= ./reports
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
JOB_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
SOURCE_URL ?= $(shell git remote get-url origin 2>/dev/null)
export REPORTS_DIR GIT_COMMIT JOB_VERSION SOURCE_URL
# `docker compose run` does not always pass the container's exit code on (some compose builds return
# 0 for a container that exited 3), so run-* read it from the container itself, then remove it.
CONTAINER := ernie-tnews-job-$(shell date +%s)-$$$$
define compose_run
	$(COMPOSE) run --name $(CONTAINER) $(1); \
	code=$$(docker inspect -f '{{.State.ExitCode}}' $(CONTAINER) 2>/dev/null || echo 125); \
	docker rm $(CONTAINER) >/dev/null 2>&1; exit $$code
endef

.PHONY: help venv venv-gpu lock demo timings example example-run bench bench-workers bench-peer parity parity-record doctor docs test test-fast run-local lint build-cpu build-gpu run-cpu run-gpu test-docker reports-dir check-gpu-runtime

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed ## create or update the local virtual environment (pinned packages)

# The GPU venv: Paddle's GPU build of the pinned version from Paddle's own index (the GPU image's CUDA,
# read from Dockerfile.gpu), then everything else as the CPU venv has it.
GPU_VENV ?= .venv-gpu
PADDLE_INDEX_URL ?= $(shell sed -n 's/^ARG PADDLE_INDEX_URL=//p' Dockerfile.gpu)
$(GPU_VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml Dockerfile.gpu
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install --quiet $(if $(PADDLE_INDEX_URL),--extra-index-url $(PADDLE_INDEX_URL)) \
	  "paddlepaddle-gpu==$$(sed -n 's/^paddlepaddle==//p' requirements.txt)" -c constraints.txt
	grep -v '^paddlepaddle==' requirements.txt > $(GPU_VENV)/requirements-no-paddle.txt
	$(GPU_VENV)/bin/pip install --quiet -r $(GPU_VENV)/requirements-no-paddle.txt -r requirements-dev.txt -c constraints.txt
	$(GPU_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

venv-gpu: $(GPU_VENV)/.installed ## the venv with Paddle's GPU build (the GPU image's CUDA 12.6; PADDLE_INDEX_URL=.../cu129/ for Blackwell); then VENV=.venv-gpu make run-local

lock: venv ## re-resolve constraints.txt from the venv after changing a pin
	(echo "# Every package version the venv and both images resolve to (regenerate: make lock)."; \
	 $(PY) -m pip freeze --exclude-editable | grep -v '^-e' | sort -f) > constraints.txt

test: venv ## run every test, the slow full-size ones included (offline)
	$(PY) -m pytest -ra

test-fast: venv ## run the tests without the slow ones (full-size model, real data, processes and signals)
	$(PY) -m pytest -ra -m "not slow"

demo: venv ## a whole report in under a minute (34 s on 2 cores) with no network: a tiny ERNIE pretrained on the spot, synthetic titles (reports/demo)
	$(PY) -m job demo --output-dir reports/demo

# The example report: the default config on the pretrained stand-in (a small ERNIE-architecture encoder
# pretrained by masked LM on TNEWS train titles; not ERNIE 3.0 Medium) and real TNEWS, on this CPU. The
# stand-in is small (hidden 128), so both rates are 6x the config's, in the same 10:1 ratio.
STANDIN_DATA ?= ../shared/data
EXAMPLE_DIR ?= reports/example
STANDIN_SETTINGS := --set model_name=$(STANDIN_DATA)/ernie-standin-tnews --set data_dir=$(STANDIN_DATA)/tnews \
  --set learning_rate=3e-4 --set lora_learning_rate=3e-3 --device cpu
example-run: venv ## the default config's 16 runs on the stand-in, on CPU (about 40 min on 2 cores; reports/example)
	@test -f $(STANDIN_DATA)/ernie-standin-tnews/config.json || { echo "make example-run: no pretrained stand-in"\
	  "at $(STANDIN_DATA)/ernie-standin-tnews (set STANDIN_DATA to the folder holding it and tnews/)"; exit 2; }
	@mkdir -p $(EXAMPLE_DIR)
	set -o pipefail; $(PY) -m job run --config configs/tnews_answer.yaml $(STANDIN_SETTINGS) --set save_artifacts=true \
	  --set capacity=true --set memory_budget_mb=1024 --output-dir $(EXAMPLE_DIR) 2>&1 | tee $(EXAMPLE_DIR)/run.log

timings: venv ## time `job demo` end to end on this machine: docs/timings.json, and the figure README and this file quote
	$(PY) -m job.example --time-demo docs

example: example-run ## example-run, then docs/example-report, every report excerpt in the docs and power.md's measured seed spread written from it
	$(PY) -m job.example $(EXAMPLE_DIR) docs
	$(PY) -m job.results.power --measured docs

bench-workers: venv ## 6 small full-size runs with 2 workers against one process, interleaved (bench-workers.json)
	JOB_BENCH_DATA=$${JOB_BENCH_DATA:-$(wildcard ../shared/data)} $(PY) -m job bench --config $(BENCH_CONFIG) --workers-ab --output bench-workers.json

bench: venv ## speed of each strategy on the full-size model (table + bench.json; a few minutes); BENCH_ARGS="--set compile=on"
	JOB_BENCH_DATA=$${JOB_BENCH_DATA:-$(wildcard ../shared/data)} $(PY) -m job bench --config $(BENCH_CONFIG) $(BENCH_ARGS) --output bench.json

PEER_VENV ?= .venv-peer
PEER_ROUNDS ?= 2
PEER_DIR ?= peer-bench
$(PEER_VENV)/.installed: peer/requirements.txt
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet $(PEER_PIP_ARGS) -r peer/requirements.txt
	touch $@

bench-peer: venv $(PEER_VENV)/.installed ## the job against torch + PEFT on the same batches, interleaved; per-token ratios
	@mkdir -p $(PEER_DIR)
	JOB_BENCH_DATA=$${JOB_BENCH_DATA:-$(wildcard ../shared/data)} $(PY) -m job bench --config $(BENCH_CONFIG) --peer-batches $(PEER_DIR)/batches.json
	for round in $$(seq $(PEER_ROUNDS)); do \
	  JOB_BENCH_DATA=$${JOB_BENCH_DATA:-$(wildcard ../shared/data)} $(PY) -m job bench --config $(BENCH_CONFIG) $(BENCH_ARGS) --no-e2e \
	    --output $(PEER_DIR)/bench-round$$round.json >/dev/null || exit $$?; \
	  $(PEER_VENV)/bin/python peer/torch_peft.py $(PEER_DIR)/batches.json > $(PEER_DIR)/peer-round$$round.jsonl || exit $$?; \
	done
	$(PY) peer/ratios.py $(PEER_DIR)

parity: venv $(PEER_VENV)/.installed ## the job's loop against transformers + PEFT, every strategy, step by step: a table (tiny model, stand-in, ERNIE 3.0 Medium's shape; 45 min on 2 cores)
	$(PY) -m tests.parity --docs

parity-record: venv $(PEER_VENV)/.installed ## parity on the tiny model and the stand-in, and their numbers written to tests/golden/ (after a deliberate change to training)
	$(PY) -m tests.parity --models tiny,standin --record --docs

doctor: venv ## check this machine: Paddle build, device, a training step of each strategy, writable folders
	$(PY) -m job doctor --config $(CONFIG)

run-local: venv ## run the job in the venv: make run-local CONFIG=configs/x.yaml
	$(PY) -m job run --config $(CONFIG)

docs: venv ## write docs/configuration.md from the config schema and docs/power.md by simulation (tests check both)
	$(PY) -m job config-reference --markdown > docs/configuration.md
	$(PY) -m job.results.power --docs docs

lint: venv ## ruff, hadolint, the compose file, the batch manifests against the services' schemas, import cycles
	$(VENV)/bin/ruff check job tests peer
	$(VENV)/bin/ruff format --check job tests peer
	$(VENV)/bin/hadolint Dockerfile.cpu Dockerfile.gpu
	$(COMPOSE) --profile '*' config -q
	$(PY) -m tests.manifest_schemas
	$(PY) -m tests.import_graph

build-cpu: ## build the CPU image (ernie-tnews-job:cpu)
	$(COMPOSE) build cpu-job

build-gpu: ## build the GPU image (ernie-tnews-job:gpu), Paddle for CUDA 12.6
	$(COMPOSE) --profile gpu build gpu-job

reports-dir:
	@mkdir -p $(REPORTS_DIR)

run-cpu: reports-dir ## run the job in the CPU container: make run-cpu CONFIG=configs/x.yaml
	@$(call compose_run,-e JOB_CONFIG=$(CONFIG) cpu-job)

check-gpu-runtime:
	@docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia || command -v nvidia-ctk >/dev/null || { \
	  echo "make run-gpu: no NVIDIA container runtime found. Install the NVIDIA driver and the NVIDIA Container"; \
	  echo "Toolkit (nvidia-ctk runtime configure --runtime=docker), or use make run-cpu."; exit 2; }

# WORKERS=8 trains 8 runs at once, one per GPU (the default, auto: one worker per visible GPU; 1: one
# process). GPUS=0,1 instead trains each run data-parallel on those GPUs (paddle.distributed.launch).
GPUS ?=
WORKERS ?= auto
run-gpu: check-gpu-runtime reports-dir ## run the job in the GPU container (--device gpu); WORKERS=N runs N at once; GPUS=0,1 data-parallel
	@$(call compose_run,-e JOB_CONFIG=$(CONFIG) -e JOB_WORKERS=$(if $(GPUS),1,$(WORKERS)) gpu-job \
	  $(if $(GPUS),launch --gpus $(GPUS) run,run) --device gpu)

test-docker: venv ## lint, build both images, run the job in them on a tiny model, check the report
	PY=$(PY) bash tests/docker/smoke.sh
