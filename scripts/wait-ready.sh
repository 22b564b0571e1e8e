#!/usr/bin/env bash
# Wait until the cluster has exactly its shape: node1..nodeN (SLURMLAB_NODES), each up with
# gres/gpu:G (SLURMLAB_GPUS_PER_NODE) and taking jobs (idle, or busy on a running cluster that was
# rescaled), and no other node; print sinfo.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

nodes=${SLURMLAB_NODES:?run through slurmlab}
gpus=${SLURMLAB_GPUS_PER_NODE:?run through slurmlab}
# One line per node: name, state, GRES. A trailing * (not responding) or drain never matches.
expected=$(for (( i = 1; i <= nodes; i++ )); do echo "node${i} ready gpu:${gpus}"; done)
timeout_s=${WAIT_READY_TIMEOUT:-180}
started=${SECONDS}
while :; do
    # sinfo lists a node once per partition: sort -u.
    if current=$(on_login sinfo -h -N -o '%N %t %G' 2>/dev/null | sort -uV) \
        && [[ $(sed -E 's/ (idle|mix|alloc|comp) / ready /' <<<"${current}") == "${expected}" ]]; then
        echo "== cluster ready: ${nodes} nodes up with ${gpus} GPU(s) each ($((SECONDS - started)) s)"
        on_login sinfo -N -o '%N %P %t %G %c %m'
        exit 0
    fi
    if (( SECONDS - started > timeout_s )); then
        echo "error: the cluster is not ready after ${timeout_s} s. Node states:" >&2
        on_login sinfo -N -o '%N %t %G %E' >&2 || "${compose[@]}" ps >&2
        echo "See README.md#troubleshooting; daemon logs: slurmlab logs (make logs)" >&2
        exit 1
    fi
    sleep 1
done
