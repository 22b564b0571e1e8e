#!/usr/bin/env bash
# Compose healthcheck: proves each role is ready to serve, not merely that its process exists.
#   mariadb   answers a query
#   slurmdbd  answers sacctmgr (over munge, from this container)
#   slurmctld answers scontrol ping
#   slurmd    this node is registered and usable (idle, allocated or mixed)
set -euo pipefail

case ${1:?usage: slurmlab-healthcheck ROLE} in
    mariadb) mariadb --protocol=socket -uroot -N -e 'SELECT 1' >/dev/null ;;
    slurmdbd) sacctmgr -n show cluster >/dev/null ;;
    slurmctld) scontrol ping | grep -q 'is UP' ;;
    slurmd)
        # one line per partition the node is in, all with the node's one state
        state=$(sinfo -h -n "$(hostname)" -o %t | sort -u)
        [[ ${state} =~ ^(idle|alloc|mix|comp)$ ]] ;;
    *) echo "unknown role: $1" >&2; exit 2 ;;
esac
