#!/usr/bin/env bash
# Nodes, queue and recent accounting in one screen.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

echo "== nodes (sinfo)"
on_login sinfo -N -o '%8N %9P %8t %10G %5c %8m %E'
echo
echo "== queue (squeue)"
on_login squeue -o '%8i %20j %9u %9T %10M %6D %R'
echo
echo "== recent jobs (sacct, last 24 h)"
on_login sacct -X -S now-1days -o 'JobID%-12,JobName%-20,User%-9,State%-12,Elapsed,NNodes,ExitCode,End'
