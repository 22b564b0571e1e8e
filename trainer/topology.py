"""Process topology from the environment: who this rank is, and whether that is consistent.

Precedence (see trainer/README.md):

1. torchrun / torch.distributed.run variables, if ``RANK`` and ``WORLD_SIZE`` are set;
2. Slurm variables, if ``SLURM_PROCID`` is set (``srun``, one task per GPU; also submitit);
3. otherwise a single process (no process group is created).

Everything here reads the environment and returns values (no torch, no processes), so it is
unit-tested without processes and job files import it (``derive_port``) without paying for torch.
Joining the process group with this topology is trainer/distributed.py's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hostlist  # python-hostlist: Slurm's hostlist and count-list syntax

__all__ = [
    "HostlistError",
    "Topology",
    "TopologyError",
    "derive_port",
    "expand_counts",
    "expand_hostlist",
    "slurm_gpu",
    "topology_from_env",
    "validate_topology",
]

DEFAULT_PORT = 29500
PORT_BASE = 20000  # job-derived ports live in [20000, 30000): below Linux's ephemeral range
PORT_SPAN = 10000


class TopologyError(RuntimeError):
    """The launch environment is inconsistent; raised before any process-group setup."""


class HostlistError(ValueError):
    """A malformed Slurm hostlist (``node[1-3,5]``) or count list (``2(x3),1``)."""


def expand_hostlist(text: str) -> list[str]:
    """``node[1-3,5]`` -> node1 node2 node3 node5, in Slurm's order."""
    entries = text.strip().split(",")
    if not text.strip() or not all(e.strip() for e in entries):  # python-hostlist skips these
        raise HostlistError(f"empty hostlist or empty entry in {text!r}")
    try:
        return list(hostlist.expand_hostlist(text))
    except hostlist.BadHostlist as exc:
        raise HostlistError(f"bad hostlist {text!r}: {exc}") from exc


def expand_counts(text: str) -> list[int]:
    """Slurm's compressed count list: ``2(x3),1`` -> [2, 2, 2, 1]."""
    try:
        return list(hostlist.parse_slurm_tasks_per_node(text))
    except hostlist.BadHostlist as exc:
        raise HostlistError(f"bad count list {text!r}: {exc}") from exc


@dataclass(frozen=True)
class Topology:
    launcher: str  # "torchrun" | "slurm" | "single"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int | None  # None when the launcher does not say
    tasks_per_node: int | None  # uniform tasks per node, when known
    master_addr: str
    master_port: int
    job_id: str | None  # SLURM_JOB_ID when running under Slurm
    requeue_id: str | None  # "<array job>_<task>" for array jobs, else SLURM_JOB_ID
    restart_count: int  # SLURM_RESTART_COUNT (0 on the first start)
    in_srun_step: bool  # SLURM_STEP_ID present (started by srun, not the batch script)
    slurm_step_tasks_here: int | None  # Slurm tasks of this step on this node, when known

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def under_slurm(self) -> bool:
        return self.job_id is not None


def _int(
    env: Mapping[str, str], name: str, problems: list[str], default: int | None = None
) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw.strip())
    except ValueError:
        problems.append(f"{name}={raw!r} is not an integer")
        return default


def derive_port(job_id: str | None) -> int:
    """MASTER_PORT for a job: 20000 + job_id % 10000 (outside the ephemeral range 32768+)."""
    if job_id:
        digits = "".join(ch for ch in job_id if ch.isdigit())
        if digits:
            return PORT_BASE + int(digits) % PORT_SPAN
    return DEFAULT_PORT


def _first_host(env: Mapping[str, str], problems: list[str]) -> str | None:
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        value = env.get(name)
        if value:
            try:
                return expand_hostlist(value)[0]
            except HostlistError as exc:
                problems.append(f"{name}: {exc}")
                return None
    return None


def _slurm_tasks_on_node(
    env: Mapping[str, str], node_id: int, problems: list[str]
) -> tuple[int | None, int | None]:
    """(tasks on this node, uniform tasks per node or None) for the current Slurm step."""
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        value = env.get(name)
        if not value:
            continue
        try:
            counts = expand_counts(value)
        except HostlistError as exc:
            problems.append(f"{name}: {exc}")
            return None, None
        if name == "SLURM_NTASKS_PER_NODE":  # a single number, same on every node
            return counts[0], counts[0]
        uniform = counts[0] if len(set(counts)) == 1 else None
        if node_id < len(counts):
            return counts[node_id], uniform
        problems.append(f"SLURM_NODEID={node_id} but {name}={value!r} lists {len(counts)} nodes")
        return None, None
    return None, None


def _torchrun_ranks(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """Rank fields from torchrun's variables."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        problems.append("RANK and WORLD_SIZE must be set together (torchrun sets both)")
    rank = _int(env, "RANK", problems, 0) or 0
    world = _int(env, "WORLD_SIZE", problems, 1) or 1
    local_rank = _int(env, "LOCAL_RANK", problems, rank)
    local_world = _int(env, "LOCAL_WORLD_SIZE", problems, world)
    node_rank = _int(env, "GROUP_RANK", problems, None)
    if node_rank is None:
        node_rank = _int(env, "NODE_RANK", problems, None)
    if node_rank is None:
        node_rank = rank // max(local_world or 1, 1)
    num_nodes = _int(env, "GROUP_WORLD_SIZE", problems, None)
    if num_nodes is None:
        num_nodes = _int(env, "NNODES", problems, None)
    return {
        "launcher": "torchrun",
        "rank": rank,
        "world_size": world,
        "local_rank": local_rank,
        "local_world_size": local_world,
        "node_rank": node_rank,
        "num_nodes": num_nodes,
        "tasks_per_node": local_world if num_nodes is not None else None,
    }


def _slurm_ranks(env: Mapping[str, str], node_rank: int, problems: list[str]) -> dict[str, Any]:
    """Rank fields from Slurm's task variables (srun, submitit)."""
    rank = _int(env, "SLURM_PROCID", problems, 0) or 0
    world: int | None = None
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"):
        world = _int(env, name, problems, None)
        if world is not None:
            break
    world = world or 1
    num_nodes = None
    for name in ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        num_nodes = _int(env, name, problems, None)
        if num_nodes is not None:
            break
    here, tasks_per_node = _slurm_tasks_on_node(env, node_rank, problems)
    if here is None:
        nodes = num_nodes or 1
        if world % nodes:
            problems.append(
                f"cannot infer tasks per node: {world} tasks over {nodes} nodes and no "
                "SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE"
            )
        here = tasks_per_node = max(world // nodes, 1)
    return {
        "launcher": "slurm",
        "rank": rank,
        "world_size": world,
        "local_rank": _int(env, "SLURM_LOCALID", problems, 0) or 0,
        "local_world_size": here,
        "node_rank": node_rank,
        "num_nodes": num_nodes,
        "tasks_per_node": tasks_per_node,
    }


SINGLE_PROCESS = {
    "launcher": "single",
    "rank": 0,
    "world_size": 1,
    "local_rank": 0,
    "local_world_size": 1,
    "node_rank": 0,
    "num_nodes": 1,
    "tasks_per_node": 1,
}


def topology_from_env(env: Mapping[str, str] | None = None) -> Topology:
    """Read the topology; raises TopologyError listing every problem found."""
    env = os.environ if env is None else env
    problems: list[str] = []
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or None
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    requeue_id = f"{array_job}_{array_task}" if array_job and array_task else job_id
    restart_count = _int(env, "SLURM_RESTART_COUNT", problems, 0) or 0
    in_step = bool(env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID"))
    slurm_node = _int(env, "SLURM_NODEID", problems, 0) or 0
    step_here, _ = _slurm_tasks_on_node(env, slurm_node, []) if in_step else (None, None)

    if "RANK" in env or "WORLD_SIZE" in env:
        ranks = _torchrun_ranks(env, problems)
    elif "SLURM_PROCID" in env:
        ranks = _slurm_ranks(env, slurm_node, problems)
    else:
        ranks = dict(SINGLE_PROCESS)

    master_addr = env.get("MASTER_ADDR") or _first_host(env, problems) or "127.0.0.1"
    port_raw = env.get("MASTER_PORT")
    master_port = _int(env, "MASTER_PORT", problems, None) if port_raw else None
    if master_port is None:
        master_port = derive_port(job_id)

    topo = Topology(
        **ranks,
        master_addr=master_addr,
        master_port=master_port,
        job_id=job_id,
        requeue_id=requeue_id,
        restart_count=restart_count,
        in_srun_step=in_step,
        slurm_step_tasks_here=step_here,
    )
    if problems:
        raise TopologyError(_format(problems, topo))
    return topo


def _format(problems: list[str], topo: Topology | None = None) -> str:
    lines = ["invalid distributed launch environment:"] + [f"  - {p}" for p in problems]
    if topo is not None:
        lines.append(
            f"  (launcher={topo.launcher} rank={topo.rank} world_size={topo.world_size} "
            f"local_rank={topo.local_rank} local_world_size={topo.local_world_size} "
            f"node_rank={topo.node_rank} num_nodes={topo.num_nodes})"
        )
    return "\n".join(lines)


def validate_topology(topo: Topology) -> None:
    """Consistency checks; raises TopologyError with every problem, before any rendezvous."""
    p: list[str] = []
    if topo.world_size < 1:
        p.append(f"world size must be >= 1, got {topo.world_size}")
    if not 0 <= topo.rank < max(topo.world_size, 1):
        p.append(f"rank {topo.rank} is outside [0, world_size={topo.world_size})")
    if topo.local_world_size < 1:
        p.append(f"local world size must be >= 1, got {topo.local_world_size}")
    elif not 0 <= topo.local_rank < topo.local_world_size:
        p.append(
            f"local rank {topo.local_rank} is outside [0, local_world_size={topo.local_world_size})"
        )
    if topo.local_world_size > topo.world_size >= 1:
        p.append(f"local world size {topo.local_world_size} exceeds world size {topo.world_size}")
    if topo.num_nodes is not None:
        if topo.num_nodes < 1:
            p.append(f"number of nodes must be >= 1, got {topo.num_nodes}")
        elif not 0 <= topo.node_rank < topo.num_nodes:
            p.append(f"node rank {topo.node_rank} is outside [0, num_nodes={topo.num_nodes})")
        if topo.tasks_per_node and topo.tasks_per_node * topo.num_nodes != topo.world_size:
            p.append(
                f"world size {topo.world_size} != tasks per node {topo.tasks_per_node} x "
                f"nodes {topo.num_nodes}"
            )
    if not 1 <= topo.master_port <= 65535:
        p.append(f"MASTER_PORT {topo.master_port} is not a valid TCP port")
    if topo.launcher == "slurm" and topo.world_size > 1 and not topo.in_srun_step:
        p.append(
            f"Slurm says {topo.world_size} tasks but this process was not started by srun "
            "(no SLURM_STEP_ID): run `srun python -m trainer ...` inside the batch script"
        )
    if (
        topo.launcher == "torchrun"
        and topo.local_world_size > 1
        and (topo.slurm_step_tasks_here or 0) > 1
    ):
        p.append(
            f"torchrun with {topo.local_world_size} processes per node inside an srun step "
            f"with {topo.slurm_step_tasks_here} tasks on this node multiplies processes: "
            "use `srun --ntasks-per-node=1 torchrun ...` or drop torchrun"
        )
    multi_node = (topo.num_nodes or 1) > 1 or topo.world_size > topo.local_world_size
    if multi_node and topo.master_addr in ("127.0.0.1", "localhost", "::1"):
        p.append(
            "MASTER_ADDR is a loopback address but the job spans several nodes: set "
            "MASTER_ADDR or run under Slurm (SLURM_JOB_NODELIST)"
        )
    if p:
        raise TopologyError(_format(p, topo))


def slurm_gpu(topo: Topology) -> str:
    """The GPU this rank uses, as the node numbers it ("-" when none is visible), followed by
    every GPU the rank can see when that is more than its own: ``1`` or ``1(0,1)``.

    Slurm gives a task its GPUs in CUDA_VISIBLE_DEVICES (only its own with --gpus-per-task=1,
    the node's all with --gpus-per-node); select_device takes LOCAL_RANK's share of them.
    Readable without CUDA, so emulated GPUs show the placement too.
    """
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    if not visible:
        return "-"
    own = visible[topo.local_rank % len(visible)]
    return own if len(visible) == 1 else f"{own}({','.join(visible)})"
