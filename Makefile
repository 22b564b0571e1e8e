# slurmlab — a real Slurm cluster on one machine.   `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

include .env
export

# The slurmlab CLI, run from this checkout: no install needed (this checkout's cluster needs only
# Python's standard library). Its errors name make's variables (NODES=2), not the CLI's flags.
PYTHON_CLI := SLURMLAB_COMMAND_STYLE=make PYTHONPATH=$(CURDIR) python3 -m
SLURMLAB := $(PYTHON_CLI) slurmlab
# This checkout's cluster: mounted at /workspace, named COMPOSE_PROJECT_NAME (.env; tests use
# another name).
CLUSTER := --project $(CURDIR) --name $(COMPOSE_PROJECT_NAME)
# The shape, where make's command line gives it: NODES=N GPUS_PER_NODE=G, GPUS=1 for the host's
# real GPUs. Otherwise the cluster keeps the shape it was given last (else .env's).
given = $(filter command line,$(origin $(1)))
SHAPE := $(if $(call given,NODES),--nodes '$(NODES)') \
  $(if $(call given,GPUS_PER_NODE),--gpus-per-node '$(GPUS_PER_NODE)') \
  $(if $(call given,GPUS),--gpu-mode $(if $(filter 1,$(GPUS)),nvidia,emulated))

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
image: ## Build the cluster's images where missing (and debian:trixie-slim if no registry has it)
	@$(SLURMLAB) build $(CLUSTER)

.PHONY: up
up: ## Start the cluster (NODES=4 GPUS_PER_NODE=1 GPUS=0) and wait until every node is idle
	@$(SLURMLAB) up $(CLUSTER) $(SHAPE)

.PHONY: scale
scale: ## Add or remove nodes of the running cluster (NODES=M); jobs and accounting are kept
	@$(SLURMLAB) scale $(CLUSTER) $(SHAPE)

.PHONY: config
config: ## Print the compose configuration `make up` would start for the shape; changes nothing
	@$(SLURMLAB) config $(CLUSTER) $(SHAPE)

.PHONY: down
down: ## Stop the cluster (state, accounting, secrets and /shared are kept)
	@$(SLURMLAB) down $(CLUSTER)

.PHONY: clean
clean: ## Stop the cluster and delete ALL its state: accounting DB, job state, secrets, shared files
	@$(SLURMLAB) clean $(CLUSTER)

.PHONY: status
status: ## Nodes, queue and recent jobs in one screen
	@$(SLURMLAB) status $(CLUSTER)

.PHONY: logs
logs: ## Follow a job's rank-0 output (JOB=<id>), or the daemons' logs
	@job=$${JOB_ID:-}; if [[ -z $$job && "$(JOB)" =~ ^[0-9]+(_[0-9]+)?$$ ]]; then job="$(JOB)"; fi; \
	 $(SLURMLAB) logs $(CLUSTER) $$job

.PHONY: shell
shell: ## Open a shell on the controller (login node) as the job user
	@$(SLURMLAB) shell $(CLUSTER)

.PHONY: env
env: ## Shell lines for a plain `docker compose` on the cluster: eval "$$(make -s env)"
	@$(SLURMLAB) env $(CLUSTER)

## ---- jobs ------------------------------------------------------------------------------

.PHONY: train
train: up ## Run the DDP training job on every node and GPU through sbatch and follow it to the end
	@$(PYTHON_CLI) slurmlab.train $(CLUSTER) $(if $(CONFIG),--config $(CONFIG)) --whole-cluster -- $(ARGS)

.PHONY: submit
submit: up ## Submit a job file (JOB=jobs/....sbatch ARGS="key=value ...") and follow it
	@$(PYTHON_CLI) slurmlab.train $(CLUSTER) $(if $(CONFIG),--config $(CONFIG)) --job $(JOB) -- $(ARGS)

## ---- development ------------------------------------------------------------------------

$(VENV)/.installed: tests/requirements.txt
	@python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q -r tests/requirements.txt
	@touch $@

.PHONY: lint
lint: $(VENV)/.installed ## ruff and shellcheck
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check slurmlab trainer tests jobs scripts bench 2>/dev/null || \
	  { echo "ruff format: run '$(VENV)/bin/ruff format slurmlab trainer tests jobs scripts bench'"; exit 1; }
	@$(VENV)/bin/shellcheck $$(git ls-files --cached --others --exclude-standard '*.sh' '.ci/run' '*.sbatch')

.PHONY: test-unit
test-unit: ## Trainer and CLI tests (CPU, multi-process gloo) inside the trainer's image
	@$(PYTHON_CLI) slurmlab.dev test-unit $(PYTEST_ARGS)

.PHONY: test-cluster
test-cluster: image $(VENV)/.installed ## End-to-end tests on a real cluster, kept between runs (make test-clean)
	@$(VENV)/bin/pytest -p no:cacheprovider -q tests/cluster $(PYTEST_ARGS)

.PHONY: test
test: lint test-unit test-cluster ## All tests: lint, unit, end-to-end (builds what is missing)

.PHONY: test-clean
test-clean: ## Remove the test cluster that test-cluster keeps running between runs
	@$(MAKE) -s clean COMPOSE_PROJECT_NAME=$${SLURMLAB_TEST_PROJECT:-slurmlab-test} \
	  $(if $(filter 0,$(shell id -u)),-C $${TMPDIR:-/tmp}/$${SLURMLAB_TEST_PROJECT:-slurmlab-test}-checkout)

.PHONY: bench
bench: ## Trainer benchmarks: throughput vs baseline, DDP scaling, time to accuracy (GPUS=1: on GPU)
	@$(PYTHON_CLI) slurmlab.dev bench $(if $(filter 1,$(GPUS)),--gpus) $(ARGS)

.PHONY: bench-cluster
bench-cluster: image $(VENV)/.installed ## Cluster latencies (up->ready, submit->training, ...) on a throwaway cluster
	@$(VENV)/bin/python -m bench.cluster_latency $(ARGS)
