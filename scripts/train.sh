#!/usr/bin/env bash
# `make train` / `make submit`: check the config, submit a job file as the job user from the
# controller, follow it to the end and say where its results are.
#   scripts/train.sh [--job jobs/X.sbatch] [--config jobs/configs/Y.yaml] [--whole-cluster] [key=value ...]
# --whole-cluster (make train): run on every node and GPU of the cluster, whatever its shape;
# otherwise (make submit) the job file's own #SBATCH lines decide.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

job_file=jobs/train_ddp.sbatch
config=${CONFIG:-}
whole_cluster=0
while (( $# )); do
    case $1 in
        --job) job_file=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --whole-cluster) whole_cluster=1; shift ;;
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

# make train: the whole cluster, whatever its shape (make up NODES=N GPUS_PER_NODE=G): N nodes
# and one task per GPU, the layout of jobs/train_ddp.sbatch (--gpus-per-task=1).
shape=()
if (( whole_cluster )); then
    shape=(--nodes="${SLURMLAB_NODES:?run through make}"
           --ntasks-per-node="${SLURMLAB_GPUS_PER_NODE:?run through make}")
fi

# Reject a bad config or override here, before anything is submitted.
on_login python -m trainer --config "${config}" --check "$@"

# The log goes to the shared filesystem, not the checkout: a root-owned checkout (CI, a root
# shell on a GPU box) is not writable by the job user, and the host can read it there.
shared=${SLURMLAB_SHARED:?see .env}
job=$(on_login env CONFIG="${config}" sbatch --parsable --output="${shared}/logs/%x-%j.out" \
    "${shape[@]}" "${job_file}" "$@")
job=${job%%;*}
echo "== submitted job ${job}: ${job_file}${shape[*]:+ ${shape[*]}} with ${config} $*"
stdout=$(on_login scontrol show job "${job}" | sed -n 's/^ *StdOut=//p')
status=0
on_login scripts/follow-job.sh "${job}" || status=$?

(( status == 0 )) || { echo "error: job ${job} did not complete; its log is above (make logs JOB=${job})" >&2; exit "${status}"; }
# The same files on the host: SHARED_HOST_DIR is the directory behind the cluster's ${shared}.
host_dir=${SHARED_HOST_DIR:?run through make}
run_dir=${host_dir}/runs/${job}
log=${host_dir}${stdout#"${shared}"}
grep -h '^Final' "${log}" | tail -1
echo "== results of job ${job}, on this host:"
echo "   curves:      ${run_dir}/curves.png"
echo "   metrics:     ${run_dir}/metrics.jsonl"
echo "   rank-0 log:  ${log}"
echo "   checkpoint:  $(find "${run_dir}/checkpoints" -name '*.pt' | sort | tail -1)"
