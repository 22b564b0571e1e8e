#!/usr/bin/env bash
# Compose healthcheck: proves each role is ready to serve, not merely that its process exists.
#   mariadb   answers a query
#   slurmdbd  answers sacctmgr (over munge, from this container)
#   slurmctld answers scontrol ping
#   slurmrestd listens on its port
#   slurmd    this node is registered with its GPUs (SLURMLAB_GPUS_PER_NODE) and takes jobs (idle,
#             allocated, mixed or completing; not drained, down or unresponsive)
# The slurmlab CLI runs the same command while it waits for a cluster: the one definition of ready.
set -euo pipefail

case ${1:?usage: slurmlab-healthcheck ROLE} in
    mariadb) mariadb --protocol=socket -uroot -N -e 'SELECT 1' >/dev/null ;;
    slurmdbd) sacctmgr -n show cluster >/dev/null ;;
    slurmctld) scontrol ping | grep -q 'is UP' ;;
    slurmrestd)
        # It listens once its plugins are loaded. A connection that sends nothing leaves no
        # trace; an HTTP request without a token would log an authentication error every time.
        exec 3<>/dev/tcp/127.0.0.1/6820 ;;
    slurmd)
        # one line per partition the node is in, all with the node's one state
        state=$(sinfo -h -n "$(hostname)" -o '%t %G' | sort -u)
        [[ ${state} =~ ^(idle|alloc|mix|comp)\ gpu:${SLURMLAB_GPUS_PER_NODE:?}$ ]] ;;
    *) echo "unknown role: $1" >&2; exit 2 ;;
esac
