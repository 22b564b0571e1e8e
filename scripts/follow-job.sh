#!/usr/bin/env bash
# Follow a Slurm job from a login node: print its output as it grows until the job has left the
# queue (requeues included), then print its accounting line. Exits 0 only if the job COMPLETED.
# Plain Slurm commands only, so it works on any cluster:  scripts/follow-job.sh JOB_ID
set -euo pipefail

job=${1:?usage: follow-job.sh JOB_ID}
poll_s=${FOLLOW_POLL_S:-1}

stdout_of() { scontrol show job "${job}" 2>/dev/null | sed -n 's/^ *StdOut=//p' | head -1; }

out=$(stdout_of)
[[ -n ${out} ]] || { echo "error: job ${job} is not in the queue" >&2; exit 1; }
echo "== following job ${job}: ${out}"

printed=0
print_new() {
    [[ -f ${out} ]] || return 0
    local size
    size=$(stat -c %s "${out}")
    if (( size > printed )); then
        tail -c +"$((printed + 1))" "${out}" | head -c "$((size - printed))"
        printed=${size}
    fi
}

while squeue -h -j "${job}" -o %T 2>/dev/null | grep -q .; do
    print_new
    sleep "${poll_s}"
done
print_new

# Accounting may lag the queue by a moment: the job's record is final once it has an end time.
state=""
for _ in $(seq 1 30); do
    record=$(sacct -X -n -P -j "${job}" -o State,End 2>/dev/null | head -1)
    state=${record%%|*}
    [[ ${record} == *'|'* && ${record#*|} != Unknown ]] && break
    sleep 1
done
echo "== sacct:"
sacct -X -j "${job}" -o 'JobID,JobName%-16,State,Elapsed,NNodes,NodeList%-16,ExitCode'
[[ ${state} == COMPLETED ]]
