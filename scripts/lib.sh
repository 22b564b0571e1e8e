# Shared helpers for the scripts in this folder (sourced, not run).
# shellcheck shell=bash

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${repo_root}" || exit 1

# The Compose command the Makefile chose (v2 plugin or v1 tool), and with this cluster's -f files.
if [[ -z ${COMPOSE:-} ]]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
# shellcheck disable=SC2034  # used by the scripts that source this file
read -r -a compose <<<"${COMPOSE}"
read -r -a dc <<<"${DC:-${COMPOSE}}"

# Run a command on the controller (the login node) as the unprivileged job user, in the login
# shell that `make shell` gives (its PATH and environment), from the checkout.
on_login() { "${dc[@]}" exec -T -u slurmlab slurmctld bash -lc 'exec "$@"' login-shell "$@"; }

# Run a command on the controller as root: what a cluster's administrator does (scontrol update,
# requeue, delete), never a job.
on_controller() { "${dc[@]}" exec -T slurmctld "$@"; }
