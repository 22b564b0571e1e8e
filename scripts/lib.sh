# Shared helpers for the scripts in this folder (sourced, not run).
# shellcheck shell=bash
#
# The slurmlab CLI runs these scripts with the cluster's environment: COMPOSE_PROJECT_NAME and
# COMPOSE_FILE name the cluster and its compose files, so a plain Compose command reaches it.

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${repo_root}" || exit 1

# Docker Compose: $COMPOSE as the CLI chose it (v2 plugin or v1 tool).
if [[ -z ${COMPOSE:-} ]]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
# shellcheck disable=SC2034  # used by the scripts that source this file
read -r -a compose <<<"${COMPOSE}"

# Run a command on the controller (the login node) as the unprivileged job user, in the login
# shell that `slurmlab shell` gives (its PATH and environment), from the project folder.
on_login() { "${compose[@]}" exec -T -u slurmlab slurmctld bash -lc 'exec "$@"' login-shell "$@"; }

# Run a command on the controller as root: what a cluster's administrator does (scontrol update,
# requeue, delete), never a job.
on_controller() { "${compose[@]}" exec -T slurmctld "$@"; }
