# slurmlab — a real Slurm cluster on one machine.   `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

include .env
export

VENV := .venv
# The slurmlab CLI, run from this checkout: no install needed. It needs Python's standard library
# and PyYAML (the site description, slurm/site.yaml): the host's python3 where it has PyYAML,
# else the venv of the host tools (made on first use). Its errors name make's variables (NODES=2),
# not the CLI's flags.
CLI_PYTHON := $(shell python3 -c 'import yaml' >/dev/null 2>&1 && echo python3 || echo $(VENV)/bin/python)
CLI_DEPS := $(if $(filter python3,$(CLI_PYTHON)),,$(VENV)/.installed)
PYTHON_CLI := SLURMLAB_COMMAND_STYLE=make PYTHONPATH=$(CURDIR) $(CLI_PYTHON) -m
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
# The site's rules (SITE=FILE, or SITE=default for slurm/site.yaml): kept until given again.
SITE_ARG := $(if $(call given,SITE),--site '$(SITE)')
# Another user of the site for shell/exec (AS=alice); USER is the environment's. AS is also
# make's own name for the assembler (default "as", or a toolchain's from the environment), so
# only an AS on make's command line counts.
AS_ARG := $(if $(call given,AS),--user '$(AS)')

PYTEST_ARGS ?=
JOB ?= jobs/train_ddp.sbatch
ARGS ?=

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

## ---- cluster -----------------------------------------------------------------------------

.PHONY: image
image: $(CLI_DEPS) ## Build the cluster's images where missing (and debian:trixie-slim if no registry has it)
	@$(SLURMLAB) build $(CLUSTER)

.PHONY: up
up: $(CLI_DEPS) ## Start the cluster (NODES=4 GPUS_PER_NODE=1 GPUS=0 SITE=FILE), or apply a changed site
	@$(SLURMLAB) up $(CLUSTER) $(SHAPE) $(SITE_ARG)

.PHONY: scale
scale: $(CLI_DEPS) ## Add or remove nodes of the running cluster (NODES=M); jobs and accounting are kept
	@$(SLURMLAB) scale $(CLUSTER) $(SHAPE)

.PHONY: config
config: $(CLI_DEPS) ## Print the compose configuration `make up` would start for the shape; changes nothing
	@$(SLURMLAB) config $(CLUSTER) $(SHAPE)

.PHONY: down
down: $(CLI_DEPS) ## Stop the cluster (state, accounting, secrets and /shared are kept)
	@$(SLURMLAB) down $(CLUSTER)

.PHONY: clean
clean: $(CLI_DEPS) ## Stop the cluster and delete ALL its state: accounting DB, job state, secrets, shared files
	@$(SLURMLAB) clean $(CLUSTER)

.PHONY: status
status: $(CLI_DEPS) ## Nodes, queue and recent jobs in one screen
	@$(SLURMLAB) status $(CLUSTER)

.PHONY: logs
logs: $(CLI_DEPS) ## Follow a job's rank-0 output (JOB=<id>), or the daemons' logs
	@job=$${JOB_ID:-}; if [[ -z $$job && "$(JOB)" =~ ^[0-9]+(_[0-9]+)?$$ ]]; then job="$(JOB)"; fi; \
	 $(SLURMLAB) logs $(CLUSTER) $$job

.PHONY: shell
shell: $(CLI_DEPS) ## Open a shell on the login node as the job user (AS=alice: as another user of the site)
	@$(SLURMLAB) shell $(CLUSTER) $(AS_ARG)

.PHONY: token
token: $(CLI_DEPS) ## REST API token and address as shell lines: eval "$$(make -s token)" (AS=alice, LIFESPAN=3600)
	@$(SLURMLAB) token $(CLUSTER) $(AS_ARG) $(if $(LIFESPAN),--lifespan '$(LIFESPAN)')

.PHONY: site-check
site-check: $(CLI_DEPS) ## Check a site description (SITE=FILE, default: the cluster's) and show what up would change
	@$(SLURMLAB) site check $(CLUSTER) $(SITE_ARG)

.PHONY: env
env: $(CLI_DEPS) ## Shell lines for a plain `docker compose` on the cluster: eval "$$(make -s env)"
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

.PHONY: gpu-check
gpu-check: ## Prove the trainer's GPU path on this host's GPU with its own PyTorch, no Docker (ARGS=--rehearse: on CPU)
	@python3 -m bench.gpu_check $(ARGS)

.PHONY: bench-cluster
bench-cluster: image $(VENV)/.installed ## Cluster latencies (up->ready, submit->training, ...) on a throwaway cluster
	@$(VENV)/bin/python -m bench.cluster_latency $(ARGS)
