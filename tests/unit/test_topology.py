"""Hostlist expansion, topology from torchrun / Slurm / nothing, validation, backend choice."""

from __future__ import annotations

import pytest

from trainer.distributed import decide_backend
from trainer.topology import (
    HostlistError,
    TopologyError,
    derive_port,
    expand_counts,
    expand_hostlist,
    slurm_gpu,
    topology_from_env,
    validate_topology,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node1", ["node1"]),
        ("node[1-3,5]", ["node1", "node2", "node3", "node5"]),
        ("a[01-03]", ["a01", "a02", "a03"]),
        ("gpu-a[1-2],cpu7", ["gpu-a1", "gpu-a2", "cpu7"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("x[3],y[7,9-10],z", ["x3", "y7", "y9", "y10", "z"]),
        ("node-[1-2].cluster", ["node-1.cluster", "node-2.cluster"]),
        ("10.0.0.[1-2]", ["10.0.0.1", "10.0.0.2"]),
    ],
)
def test_expand_hostlist(text: str, expected: list[str]) -> None:
    assert expand_hostlist(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "node[1-", "node]1[", "node[a-b]", "node[3-1]", "a,,b", "n[[1]]"]
)
def test_expand_hostlist_errors(bad: str) -> None:
    with pytest.raises(HostlistError):
        expand_hostlist(bad)


def test_expand_counts() -> None:
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]
    assert expand_counts("4") == [4]
    with pytest.raises(HostlistError):
        expand_counts("2(x)")


def test_single_process() -> None:
    t = topology_from_env({})
    validate_topology(t)
    assert (t.launcher, t.rank, t.world_size, t.local_rank, t.local_world_size) == (
        "single",
        0,
        1,
        0,
        1,
    )
    assert not t.is_distributed and t.is_main and not t.under_slurm
    assert t.requeue_id is None


def test_torchrun_env() -> None:
    env = {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "2",
        "GROUP_WORLD_SIZE": "4",
        "MASTER_ADDR": "head",
        "MASTER_PORT": "29400",
    }
    t = topology_from_env(env)
    validate_topology(t)
    assert (t.launcher, t.rank, t.world_size, t.local_rank, t.local_world_size) == (
        "torchrun",
        5,
        8,
        1,
        2,
    )
    assert (t.node_rank, t.num_nodes, t.master_addr, t.master_port) == (2, 4, "head", 29400)


def test_torchrun_takes_precedence_over_slurm() -> None:
    env = {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1234",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_ID": "77",
        "SLURM_STEP_ID": "0",
    }
    t = topology_from_env(env)
    assert t.launcher == "torchrun" and t.rank == 1 and t.world_size == 2
    assert t.job_id == "77" and t.requeue_id == "77"  # requeue still goes through Slurm


def slurm_env(**kw: str) -> dict[str, str]:
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "2",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NODELIST": "gpu[03-06]",
        "SLURM_STEP_ID": "0",
    }
    env.update(kw)
    return env


def test_slurm_env() -> None:
    t = topology_from_env(slurm_env())
    validate_topology(t)
    assert (t.launcher, t.rank, t.world_size, t.local_rank, t.local_world_size) == (
        "slurm",
        5,
        8,
        1,
        2,
    )
    assert (t.node_rank, t.num_nodes, t.tasks_per_node) == (2, 4, 2)
    assert t.master_addr == "gpu03"  # first host of the nodelist
    assert t.master_port == 20000 + 4242
    assert t.requeue_id == "4242" and t.under_slurm


@pytest.mark.parametrize(
    ("visible", "local_rank", "expected"),
    [
        ("1", "1", "1"),  # --gpus-per-task=1: each task sees only its own GPU
        ("0,1", "1", "1(0,1)"),  # --gpus-per-node=2 (torchrun, submitit): LOCAL_RANK picks
        ("4,5,6,7", "2", "6(4,5,6,7)"),
        ("", "0", "-"),  # no GPU given
    ],
)
def test_slurm_gpu_is_the_nodes_number_of_the_ranks_gpu(
    monkeypatch: pytest.MonkeyPatch, visible: str, local_rank: str, expected: str
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert slurm_gpu(topology_from_env(slurm_env(SLURM_LOCALID=local_rank))) == expected


def test_slurm_master_addr_and_port_from_env_win() -> None:
    t = topology_from_env(slurm_env(MASTER_ADDR="10.1.2.3", MASTER_PORT="31000"))
    assert (t.master_addr, t.master_port) == ("10.1.2.3", 31000)


def test_slurm_tasks_per_node_inferred_and_heterogeneous() -> None:
    env = slurm_env()
    del env["SLURM_NTASKS_PER_NODE"]
    t = topology_from_env(env)  # NTASKS // JOB_NUM_NODES
    assert t.local_world_size == 2 and t.tasks_per_node == 2
    env.update(
        {
            "SLURM_NTASKS": "7",
            "SLURM_TASKS_PER_NODE": "2(x3),1",
            "SLURM_PROCID": "6",
            "SLURM_NODEID": "3",
            "SLURM_LOCALID": "0",
        }
    )
    t = topology_from_env(env)
    validate_topology(t)
    assert t.local_world_size == 1 and t.tasks_per_node is None and t.world_size == 7


def test_slurm_array_requeue_id() -> None:
    t = topology_from_env(
        slurm_env(
            SLURM_ARRAY_JOB_ID="100",
            SLURM_ARRAY_TASK_ID="7",
            SLURM_JOB_ID="107",
            SLURM_RESTART_COUNT="2",
        )
    )
    assert t.requeue_id == "100_7" and t.job_id == "107" and t.restart_count == 2
    assert t.master_port == 20000 + 107


def test_derive_port_outside_ephemeral_range() -> None:
    for job in ("1", "9999", "10000", "123456789", "4242"):
        port = derive_port(job)
        assert 20000 <= port < 30000 < 32768
    assert derive_port(None) == 29500
    assert derive_port("12345") != derive_port("12346")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "4", "WORLD_SIZE": "4"}, "rank 4 is outside [0, world_size=4)"),
        (
            {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"},
            "local rank 2 is outside",
        ),
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
        ({"RANK": "0"}, "RANK and WORLD_SIZE must be set together"),
        (
            {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "8"},
            "local world size 8 exceeds world size 4",
        ),
        (slurm_env(SLURM_NTASKS="6"), "world size 6 != tasks per node 2 x nodes 4"),
        (slurm_env(SLURM_STEP_ID=""), "not started by srun"),
        (slurm_env(SLURM_NODEID="4", SLURM_LOCALID="0"), "node rank 4 is outside"),
        (slurm_env(SLURM_JOB_NODELIST="gpu[1-"), "SLURM_JOB_NODELIST"),
        (
            {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"},
            "MASTER_ADDR is a loopback address",
        ),
        (
            {
                "RANK": "0",
                "WORLD_SIZE": "4",
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "4",
                "MASTER_ADDR": "h",
                "SLURM_STEP_ID": "0",
                "SLURM_STEP_TASKS_PER_NODE": "4",
                "SLURM_JOB_ID": "1",
            },
            "multiplies processes",
        ),
        ({"RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "70000"}, "not a valid TCP port"),
    ],
)
def test_topology_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(TopologyError) as info:
        validate_topology(topology_from_env(env))
    assert message in str(info.value)


def test_topology_error_lists_every_problem() -> None:
    env = {
        "RANK": "9",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "5",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "h",
    }
    with pytest.raises(TopologyError) as info:
        validate_topology(topology_from_env(env))
    assert "rank 9" in str(info.value) and "local rank 5" in str(info.value)


def test_decide_backend() -> None:
    assert decide_backend("auto", [("h", ""), ("h", "")])[0] == "gloo"
    assert decide_backend("auto", [("a", "GPU-1"), ("b", "GPU-1")])[0] == "nccl"  # other hosts
    backend, why = decide_backend("auto", [("a", "GPU-1"), ("a", "GPU-1")])
    assert backend == "gloo" and "share one GPU" in why
    assert decide_backend("auto", [("a", "GPU-1"), ("a", "GPU-2")])[0] == "nccl"
    assert decide_backend("gloo", [("a", "GPU-1"), ("a", "GPU-2")])[0] == "gloo"
    with pytest.raises(TopologyError, match="backend=nccl was requested"):
        decide_backend("nccl", [("a", ""), ("b", "")])
    with pytest.raises(TopologyError, match="share one GPU"):
        decide_backend("nccl", [("a", "GPU-1"), ("a", "GPU-1")])
