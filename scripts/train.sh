#!/usr/bin/env bash
# `make train` / `make submit`: check the config, submit a job file as the job user from the
# controller, follow it to the end and say where its results are.
#   scripts/train.sh [--job jobs/X.sbatch] [--config jobs/configs/Y.yaml] [key=value ...]
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

job_file=jobs/train_ddp.sbatch
config=${CONFIG:-}
while (( $# )); do
    case $1 in
        --job) job_file=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        *) break ;;
    esac
done
[[ -f ${job_file} ]] || { echo "error: job file ${job_file} not found (JOB=jobs/<name>.sbatch)" >&2; exit 2; }

if [[ -z ${config} ]]; then
    # ResNet50 on CIFAR-10 is a GPU workload; on emulated GPUs the same job runs the CPU demo.
    if [[ ${SLURMLAB_GPU_MODE:-emulated} == nvidia ]]; then
        config=jobs/configs/resnet50_cifar10.yaml
    else
        config=jobs/configs/simple_cnn_synthetic.yaml
        echo "== emulated GPUs: training the CPU demo (${config}); pass CONFIG=... for another"
    fi
fi
[[ -f ${config} ]] || { echo "error: config ${config} not found (CONFIG=jobs/configs/<name>.yaml)" >&2; exit 2; }

# Reject a bad config or override here, before anything is submitted.
on_login python -m trainer --config "${config}" --check "$@"

job=$(on_login env CONFIG="${config}" sbatch --parsable "${job_file}" "$@")
job=${job%%;*}
echo "== submitted job ${job}: ${job_file} with ${config} $*"
stdout=$(on_login scontrol show job "${job}" | sed -n 's/^ *StdOut=//p')
status=0
on_login scripts/follow-job.sh "${job}" || status=$?

(( status == 0 )) || { echo "error: job ${job} did not complete; its log is above (make logs JOB=${job})" >&2; exit "${status}"; }
run_dir=${SLURMLAB_SHARED:-/shared}/runs/${job}
echo "== results of job ${job} (in the cluster's /shared, see make shell)"
on_login bash -c "grep -h '^Final' ${stdout} | tail -1; ls -1 ${run_dir}/curves.png; ls -1d ${run_dir}/checkpoints/* | tail -1"
