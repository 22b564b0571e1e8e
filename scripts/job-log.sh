#!/usr/bin/env bash
# Follow a job's rank-0 output (FOLLOW=0: print it and exit): the StdOut path Slurm recorded for it (works for queued, running and
# finished jobs while Slurm remembers them, then from accounting).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

job=${1:?usage: job-log.sh JOB_ID}
[[ ${job} =~ ^[0-9]+(_[0-9]+)?$ ]] || { echo "error: '${job}' is not a job id (e.g. slurmlab logs 12, make logs JOB=12)" >&2; exit 2; }
out=$(on_login scontrol show job "${job}" 2>/dev/null | sed -n 's/^ *StdOut=//p' | head -1)
if [[ -z ${out} ]]; then
    out=$(on_login sacct -X -n -P -j "${job}" -o StdOut 2>/dev/null | head -1)
fi
[[ -n ${out} ]] || { echo "error: job ${job} is unknown to Slurm and to accounting" >&2; exit 1; }
out=${out//%j/${job}}
echo "== ${out}"
if [[ ${FOLLOW:-1} == 1 ]]; then on_login tail -n +1 -F "${out}"; else on_login cat "${out}"; fi
