#!/usr/bin/env bash
# Wait until every node of the default partition is idle and advertises its GPU; print sinfo.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

timeout_s=${WAIT_READY_TIMEOUT:-180}
started=${SECONDS}
while :; do
    # One line per node: name, state, GRES (sinfo lists a node once per partition: sort -u).
    # The node count is Slurm's own (slurm.conf).
    if nodes=$(on_login sinfo -h -N -o '%N %t %G' 2>/dev/null | sort -u) && [[ -n ${nodes} ]]; then
        total=$(wc -l <<<"${nodes}")
        ready=$(awk '$2 == "idle" && $3 ~ /gpu:1/' <<<"${nodes}" | wc -l)
        if (( ready == total )); then
            echo "== cluster ready: ${ready} nodes idle with a GPU ($((SECONDS - started)) s)"
            on_login sinfo -N -o '%N %P %t %G %c %m'
            exit 0
        fi
    fi
    if (( SECONDS - started > timeout_s )); then
        echo "error: the cluster is not ready after ${timeout_s} s. Node states:" >&2
        on_login sinfo -N -o '%N %t %G %E' >&2 || "${dc[@]}" ps >&2
        echo "See README.md#troubleshooting; daemon logs: make logs" >&2
        exit 1
    fi
    sleep 1
done
