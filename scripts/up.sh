#!/usr/bin/env bash
# `slurmlab up` / `slurmlab scale` (and make up / make scale): give the cluster its shape, NODES
# nodes (node1..nodeN) with GPUS_PER_NODE GPUs each, and wait until every node is up with its GPUs.
#   scripts/up.sh            start the cluster (or reshape it, if it runs)
#   scripts/up.sh --config   print the compose configuration of the shape; start or change nothing
#
# Nodes register themselves (dynamic nodes, slurm/slurm.conf), so a shape is only which node
# containers run. Removing a node never loses a job: the node is drained, a job running on it is
# requeued (it starts again, from its checkpoint, on the nodes that remain) and only then is the
# node deleted from Slurm and its container removed. Accounting is untouched.
#
# Inputs, from the slurmlab CLI, which has checked the shape: SLURMLAB_NODES,
# SLURMLAB_GPUS_PER_NODE, SLURMLAB_GPU_MODE (nvidia: real GPUs), SLURMLAB_IMAGE, SHAPE_FILE (this
# cluster's recorded shape), GPU_OVERRIDE (compose file for real GPUs), SLURMLAB_SAY_SCALE (how
# the user grows the cluster: "slurmlab scale --nodes " or "make scale NODES=").
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

readonly CONTROLLER_TIER=(mariadb slurmdbd slurmctld)
# Job states in which a job holds its nodes' processes (squeue -t).
readonly RUNNING_STATES=CONFIGURING,RUNNING,SUSPENDED,COMPLETING
nodes=${SLURMLAB_NODES:?run through slurmlab}
gpus=${SLURMLAB_GPUS_PER_NODE:?run through slurmlab}
gpu_mode=${SLURMLAB_GPU_MODE:?run through slurmlab}
image=${SLURMLAB_IMAGE:?run through slurmlab}
shape_file=${SHAPE_FILE:?run through slurmlab}
gpu_override=${GPU_OVERRIDE:?run through slurmlab}
say_scale=${SLURMLAB_SAY_SCALE:?run through slurmlab}
mode=${1:-up}

fail() { echo "error: $*" >&2; exit 2; }
# Compose with this cluster's files: the real-GPU override exists only for real GPUs.
compose_files() {
    local files=(-f "${repo_root}/docker-compose.yml")
    [[ ! -f ${gpu_override} ]] || files+=(-f "${gpu_override}")
    "${compose[@]}" "${files[@]}" "$@"
}

recorded_nodes='' recorded_gpus=''
if [[ -f ${shape_file} ]]; then
    recorded_nodes=$(sed -n 's/^NODES=//p' "${shape_file}")
    recorded_gpus=$(sed -n 's/^GPUS_PER_NODE=//p' "${shape_file}")
fi

target=()
for (( i = 1; i <= nodes; i++ )); do target+=("node${i}"); done

# ---- what to remove: nodes beyond the shape, and every node when the GPUs per node change ----

# Node containers of this project beyond the shape (running or not), and the nodes Slurm knows.
extra_node_containers() {
    local name
    docker ps -a --filter "label=com.docker.compose.project=${COMPOSE_PROJECT_NAME:?run through slurmlab}" \
        --format '{{.Label "com.docker.compose.service"}}' | { grep -E '^node[0-9]+$' || true; } \
        | while read -r name; do (( ${name#node} <= nodes )) || echo "${name}"; done
}
slurm_nodes() { on_login sinfo -h -N -o '%N %G' | sort -u; }  # once per partition: sort -u

nodes_to_remove() {
    local name gres
    while read -r name gres; do
        if (( ${name#node} > nodes )) || [[ ${gres} != "gpu:${gpus}" ]]; then echo "${name}"; fi
    done < <(slurm_nodes)
    extra_node_containers
}

# Drain, requeue what runs there, delete from Slurm, remove the containers. Refuses, before
# changing anything, when a running job there may not be requeued (it would be lost).
remove_nodes() {
    local list known jobs job stuck
    list=$(IFS=,; echo "$*")
    known=$(slurm_nodes | awk '{print $1}' | grep -xF -f <(printf '%s\n' "$@") | paste -sd, || true)
    if [[ -n ${known} ]]; then
        jobs=$(on_login squeue -h -w "${known}" -t "${RUNNING_STATES}" -O 'JobID:20,Requeue:4')
        stuck=$(awk '$2 == "0" {print $1}' <<<"${jobs}" | paste -sd' ')
        [[ -z ${stuck} ]] || fail "job(s) ${stuck} run on ${known} and cannot be requeued (--no-requeue): wait for them (squeue -w ${known}) or scancel them, then run this again. Nothing was changed."
        echo "== removing ${list}: draining; running jobs are requeued and start again on the nodes that remain"
        on_controller scontrol update NodeName="${known}" State=DRAIN Reason="removed from the cluster's shape"
        while read -r job _; do
            [[ -n ${job} ]] || continue
            echo "   requeueing job ${job}"
            on_controller scontrol requeue "${job}"
        done <<<"${jobs}"
        local deadline=$(( SECONDS + 120 ))
        until [[ -z $(on_login squeue -h -w "${known}" -o %i) ]]; do
            (( SECONDS < deadline )) || fail "jobs still on ${known} after 120 s: $(on_login squeue -w "${known}")"
            sleep 1
        done
    fi
    # The container goes first: a slurmd still running would register the node again.
    "${compose[@]}" rm -s -f "$@" >/dev/null
    if [[ -n ${known} ]]; then
        local tries=0
        until on_controller scontrol delete NodeName="${known}" 2>/dev/null; do
            (( ++tries < 30 )) || fail "could not delete ${known} from Slurm: scontrol delete NodeName=${known}"
            sleep 1
        done
    fi
}

# Jobs still queued that need more nodes than the new shape has wait for them; say so.
warn_unfitting_jobs() {
    on_login squeue -h -t PENDING -o '%i %D' | while read -r job need; do
        (( need <= nodes )) || echo "warning: job ${job} needs ${need} nodes; it waits until the cluster has them (${say_scale}${need})" >&2
    done
}

# ---- bring the cluster to the shape --------------------------------------------------------

write_shape() {
    mkdir -p "$(dirname "${shape_file}")"
    printf '# Written by slurmlab up: this cluster'\''s shape and image (slurmlab clean forgets it).\nNODES=%s\nGPUS_PER_NODE=%s\nGPU_MODE=%s\nIMAGE=%s\n' \
        "${nodes}" "${gpus}" "${gpu_mode}" "${image}" >"${shape_file}"
    if [[ ${gpu_mode} == nvidia ]]; then write_gpu_override >"${gpu_override}"; else rm -f "${gpu_override}"; fi
}

# Real GPUs: node k gets host GPUs (k-1)*G .. k*G-1, each node its own. Written, not committed,
# because the device lists follow from the shape.
write_gpu_override() {
    local k first
    echo "# Written by scripts/up.sh for NODES=${nodes} GPUS_PER_NODE=${gpus}: real NVIDIA GPUs."
    echo "services:"
    for (( k = 1; k <= nodes; k++ )); do
        first=$(( (k - 1) * gpus ))
        cat <<EOF
  node${k}:
    runtime: nvidia
    environment:
      SLURMLAB_GPU_MODE: nvidia
      NVIDIA_DRIVER_CAPABILITIES: compute,utility
      NVIDIA_VISIBLE_DEVICES: "$(seq -s, "${first}" $(( first + gpus - 1 )))"
    ulimits:
      memlock: -1  # NCCL pins host memory
EOF
    done
}

if [[ ${mode} == --config ]]; then
    override=$(mktemp)
    trap 'rm -f "${override}"' EXIT
    files=(-f "${repo_root}/docker-compose.yml")
    [[ ${gpu_mode} != nvidia ]] || { write_gpu_override >"${override}"; files+=(-f "${override}"); }
    "${compose[@]}" "${files[@]}" config
    exit 0
fi

# A running cluster whose image changed (the project's dependencies, or slurmlab's own image)
# has every container started again by `compose up`; refuse while a job runs, which would die.
check_image_change_loses_no_job() {
    local project_label="label=com.docker.compose.project=${COMPOSE_PROJECT_NAME}" want jobs
    [[ -n $(docker ps -q --filter "${project_label}" --filter label=com.docker.compose.service=slurmctld) ]] || return 0
    want=$(docker image inspect -f '{{.Id}}' "${image}")
    # shellcheck disable=SC2046  # one id per word
    docker inspect -f '{{.Image}}' $(docker ps -q --filter "${project_label}") | grep -qvxF "${want}" || return 0
    jobs=$(on_controller squeue -h -t "${RUNNING_STATES}" -o %i | paste -sd' ') \
        || fail "the cluster's image changed (${image}), and the controller cannot say which jobs run: see the daemons' logs (slurmlab logs)"
    [[ -z ${jobs} ]] || fail "the cluster's image changed (${image}: the project's dependencies or slurmlab's image), so every container of the cluster starts again, and job(s) ${jobs} run there now: wait for them (squeue) or scancel them, then run this again. Nothing was changed."
    echo "== the cluster's image changed (${image}): its containers start again with it (queued jobs, accounting and shared files are kept)"
}
check_image_change_loses_no_job

reshaping=0
if [[ -n ${recorded_nodes} && ( ${recorded_nodes} != "${nodes}" || ${recorded_gpus} != "${gpus}" ) ]]; then
    reshaping=1
elif [[ -n $(extra_node_containers) ]]; then
    reshaping=1
fi

if (( reshaping )); then
    # The controller must answer before nodes can be drained, requeued and deleted.
    compose_files up -d "${CONTROLLER_TIER[@]}"
    tries=0
    until on_login scontrol ping >/dev/null 2>&1; do
        (( ++tries < 120 )) || fail "the controller does not answer: see the daemons' logs (slurmlab logs)"
        sleep 1
    done
    mapfile -t extra < <(nodes_to_remove | sort -uV)
    (( ${#extra[@]} == 0 )) || remove_nodes "${extra[@]}"
fi
write_shape
echo "== cluster ${COMPOSE_PROJECT_NAME}: ${nodes} node(s) x ${gpus} GPU(s) ($([[ ${gpu_mode} == nvidia ]] && echo real || echo emulated))"
compose_files up -d --remove-orphans "${CONTROLLER_TIER[@]}" "${target[@]}"
(( ! reshaping )) || warn_unfitting_jobs
bash "${repo_root}/scripts/wait-ready.sh"
