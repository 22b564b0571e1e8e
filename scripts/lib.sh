# Shared helpers for the scripts in this folder (sourced, not run).
# shellcheck shell=bash

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${repo_root}" || exit 1

# The Compose command the Makefile chose (v2 plugin or v1 tool), with its -f files.
if [[ -z ${DC:-} ]]; then
    if docker compose version >/dev/null 2>&1; then DC="docker compose"; else DC=docker-compose; fi
fi
read -r -a dc <<<"${DC}"

# Run a command on the controller (the login node) as the unprivileged job user, in the login
# shell that `make shell` gives (its PATH and environment), from the checkout.
on_login() { "${dc[@]}" exec -T -u slurmlab slurmctld bash -lc 'exec "$@"' login-shell "$@"; }
