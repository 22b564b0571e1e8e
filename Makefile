# slurmlab — a real Slurm cluster on one machine.   `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

include .env
export

# This cluster's files on the host; its shared/ is the cluster's shared filesystem (see .env).
CLUSTER_HOST_DIR := $(abspath $(SLURMLAB_HOST_DIR)/$(COMPOSE_PROJECT_NAME))
export SHARED_HOST_DIR := $(CLUSTER_HOST_DIR)/shared

# The cluster's shape: NODES x GPUS_PER_NODE, real GPUs when GPUS=1. Given on the command line,
# else this cluster's shape as `make up` recorded it, else .env.
export SHAPE_FILE := $(CLUSTER_HOST_DIR)/shape.env
-include $(SHAPE_FILE)
NODES ?= $(SLURMLAB_NODES)
GPUS_PER_NODE ?= $(SLURMLAB_GPUS_PER_NODE)
GPUS ?= 0
export SLURMLAB_NODES := $(NODES)
export SLURMLAB_GPUS_PER_NODE := $(GPUS_PER_NODE)
ifeq ($(GPUS),1)
export SLURMLAB_GPU_MODE := nvidia
endif

# Docker Compose v2 plugin if present, else the standalone v1 tool; real GPUs add the override
# that scripts/up.sh writes for the shape.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
export GPU_OVERRIDE := $(CLUSTER_HOST_DIR)/compose.gpus.yml
DC := $(COMPOSE) -f docker-compose.yml $(if $(wildcard $(GPU_OVERRIDE)),-f $(GPU_OVERRIDE))

VENV := .venv
PYTEST_ARGS ?=
JOB ?= jobs/train_ddp.sbatch
ARGS ?=

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

## ---- cluster -----------------------------------------------------------------------------

.PHONY: image
image: ## Build the cluster image (and debian:trixie-slim locally if no registry has it)
	@scripts/preflight.sh
	@scripts/ensure-base-image.sh
	@scripts/build-image.sh

.PHONY: up
up: image ## Start the cluster (NODES=4 GPUS_PER_NODE=1 GPUS=0) and wait until every node is idle
	@mkdir -p "$(SHARED_HOST_DIR)"  # by us, not by Docker as root
	@scripts/up.sh

.PHONY: scale
scale: ## Add or remove nodes of the running cluster (NODES=M); jobs and accounting are kept
	@scripts/up.sh --scale

.PHONY: config
config: ## Print the compose configuration `make up` would start for the shape; changes nothing
	@scripts/up.sh --config

.PHONY: down
down: ## Stop the cluster (state, accounting, secrets and /shared are kept)
	@$(DC) down --remove-orphans

.PHONY: clean
clean: ## Stop the cluster and delete ALL its state: accounting DB, job state, secrets, shared files
	@$(DC) down --volumes --remove-orphans
	@# Jobs wrote the shared files as the job user; where that is not us, remove them as root.
	@rm -rf "$(CLUSTER_HOST_DIR)" 2>/dev/null || docker run --rm --entrypoint rm \
	  -v "$(dir $(CLUSTER_HOST_DIR)):/host" $(SLURMLAB_IMAGE) -rf "/host/$(COMPOSE_PROJECT_NAME)"

.PHONY: status
status: ## Nodes, queue and recent jobs in one screen
	@scripts/status.sh

.PHONY: logs
logs: ## Follow a job's rank-0 output (JOB=<id>), or the daemons' logs
	@if [[ -n "$${JOB_ID:-}" || "$(JOB)" =~ ^[0-9]+$$ ]]; then scripts/job-log.sh "$${JOB_ID:-$(JOB)}"; \
	 else $(DC) logs -f --tail=100; fi

.PHONY: shell
shell: ## Open a shell on the controller (login node) as the job user
	@$(DC) exec -u slurmlab slurmctld bash -l

## ---- jobs ------------------------------------------------------------------------------

.PHONY: train
train: up ## Run the DDP training job on every node and GPU through sbatch and follow it to the end
	@scripts/train.sh --whole-cluster $(ARGS)

.PHONY: submit
submit: up ## Submit a job file (JOB=jobs/....sbatch ARGS="key=value ...") and follow it
	@scripts/train.sh --job $(JOB) $(ARGS)

## ---- development ------------------------------------------------------------------------

$(VENV)/.installed: tests/requirements.txt
	@python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q -r tests/requirements.txt
	@touch $@

.PHONY: lint
lint: $(VENV)/.installed ## ruff and shellcheck
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check trainer tests jobs scripts bench 2>/dev/null || \
	  { echo "ruff format: run '$(VENV)/bin/ruff format trainer tests jobs scripts'"; exit 1; }
	@$(VENV)/bin/shellcheck $$(git ls-files '*.sh' 'images/*.sh' '.ci/run' 'jobs/*.sbatch')

.PHONY: test-unit
test-unit: image ## Trainer tests (CPU, multi-process gloo) inside the job image
	@docker run --rm -u "$(JOB_UID)" -e HOME=/tmp -v "$(CURDIR):/workspace:ro" -w /workspace \
	  --shm-size=1g $(SLURMLAB_IMAGE) python -m pytest -p no:cacheprovider -q tests/unit $(PYTEST_ARGS)

.PHONY: test-cluster
test-cluster: image $(VENV)/.installed ## End-to-end tests on a real, throwaway cluster
	@$(VENV)/bin/pytest -p no:cacheprovider -q tests/cluster $(PYTEST_ARGS)

.PHONY: test
test: lint test-unit test-cluster ## All tests: lint, unit, end-to-end (builds what is missing)

.PHONY: bench
bench: image ## Trainer benchmarks: throughput vs baseline, DDP scaling, time to accuracy (GPUS=1: on GPU)
	@docker run --rm -u "$(JOB_UID)" -e HOME=/tmp -v "$(CURDIR):/workspace:ro" -w /workspace \
	  --shm-size=1g $(if $(filter 1,$(GPUS)),--gpus all) $(SLURMLAB_IMAGE) python -m bench $(ARGS)

.PHONY: bench-cluster
bench-cluster: image $(VENV)/.installed ## Cluster latencies (up->ready, submit->training, ...) on a throwaway cluster
	@$(VENV)/bin/python -m bench.cluster_latency $(ARGS)
