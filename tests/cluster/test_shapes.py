"""The cluster shaped like the user's: `make up NODES=N GPUS_PER_NODE=G`, `make scale NODES=M`.

These tests reshape the session's test cluster the way a user does (make targets on a running
cluster): 2 nodes x 2 GPUs, 6 nodes x 1 GPU, scaling with jobs queued. Each test gives the
cluster the shape it needs (`make up` on a cluster that has it already changes nothing), so any
of them runs alone; the module puts the default 4 x 1 shape back at the end.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import pytest
from conftest import DEMO_CONFIG, SHARED, SMALL_DATA, Cluster, make, training_log

# A short real DDP run: the shape is what is tested.
QUICK = f"epochs=1 max_steps_per_epoch=8 {SMALL_DATA}"


@pytest.fixture(scope="module", autouse=True)
def default_shape_afterwards(cluster: Cluster) -> Iterator[None]:
    yield
    proc = make("up", "NODES=4", "GPUS_PER_NODE=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def reshape(*settings: str, target: str = "up") -> str:
    proc = make(target, *settings, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def nodes_and_gres(cluster: Cluster) -> list[str]:
    """`node gres` per node, in node order (sinfo lists a node once per partition)."""
    lines = set(cluster.login("sinfo -h -N -o '%N %G'").splitlines())
    return sorted(lines, key=lambda line: int(line.split()[0].removeprefix("node")))


def placement(log: str) -> list[tuple[str, str, str]]:
    """(node, GPU, the GPUs it sees when more than its own) of every rank, from the trainer's
    "Rank placement" line (rank1=node1/gpu1 or rank1=node1/gpu1(0,1))."""
    match = re.search(r"^Rank placement: (.*)$", log, re.M)
    assert match, log[-3000:]
    return re.findall(r"rank\d+=(\w+)/gpu(\w+)(?:\(([\d,]+)\))?", match.group(1))


def assert_one_gpu_per_rank(log: str, nodes: int, gpus: int, sees_only_its_own: bool) -> None:
    """One distinct GPU per rank, G ranks on each node; with --gpus-per-task=1 Slurm shows each
    task only its own GPU, with --gpus-per-node every rank sees the node's G."""
    seen = placement(log)
    ranks = [(node, gpu) for node, gpu, _ in seen]
    visible = {others for _, _, others in seen}
    assert visible == ({""} if sees_only_its_own else {",".join(map(str, range(gpus)))}), seen
    assert len(ranks) == nodes * gpus, ranks
    assert len(set(ranks)) == len(ranks), f"two ranks share a GPU: {ranks}"
    assert Counter(node for node, _ in ranks) == {f"node{k}": gpus for k in range(1, nodes + 1)}
    assert {gpu for _, gpu in ranks} == {str(g) for g in range(gpus)}
    assert re.search(rf"Topology: \S+ rank=0 world_size={nodes * gpus} ", log), log[:3000]


TWO_BY_TWO = ("NODES=2", "GPUS_PER_NODE=2")
SIX_BY_ONE = ("NODES=6", "GPUS_PER_NODE=1")


def test_two_nodes_with_two_gpus_each(cluster: Cluster) -> None:
    reshape(*TWO_BY_TWO)
    assert nodes_and_gres(cluster) == ["node1 gpu:2", "node2 gpu:2"]
    # Each node has two GPU devices of its own, which Slurm hands out one per task.
    assert cluster.login("ls /dev/nvidia*", service="node2").split() == [
        "/dev/nvidia0",
        "/dev/nvidia1",
    ]


@pytest.mark.parametrize(
    ("job_file", "shape", "launcher", "own_gpu_only"),
    [
        # The README's commands for this shape: the job file asks one GPU per task, or runs one
        # torchrun per node; the shape is given on the command line.
        ("jobs/train_ddp.sbatch", "--nodes=2 --ntasks-per-node=2", "slurm", True),
        ("jobs/train_torchrun.sbatch", "--nodes=2 --gpus-per-node=2", "torchrun", False),
    ],
    ids=["srun-rank-per-task", "torchrun-per-node"],
)
def test_job_files_run_one_rank_per_gpu_on_a_two_by_two_cluster(
    cluster: Cluster, job_file: str, shape: str, launcher: str, own_gpu_only: bool
) -> None:
    reshape(*TWO_BY_TWO)
    job, rc = cluster.sbatch(
        f"--output={SHARED}/tests/logs/%j.out {shape} {job_file} {QUICK}",
        env=f"CONFIG={DEMO_CONFIG}",
    )
    log = cluster.login(f"cat {training_log(job)}")
    assert rc == 0, log[-3000:]
    assert cluster.sacct(job) == ["COMPLETED", "2", "0:0"]
    assert f"launcher={launcher}" in log
    assert_one_gpu_per_rank(log, nodes=2, gpus=2, sees_only_its_own=own_gpu_only)


def test_submitit_runs_one_task_per_gpu(cluster: Cluster) -> None:
    reshape(*TWO_BY_TWO)
    out = cluster.login(
        f"python jobs/submit.py --nodes 2 --gpus-per-node 2 --timeout-min 20 "
        f"--config {DEMO_CONFIG} {QUICK}",
        timeout=900,
    )
    assert re.search(r"job \d+: 4 ranks returned, COMPLETED", out), out
    rank0_log = re.search(r"output: (\S+)", out)
    assert rank0_log, out
    log = cluster.login(f"cat {rank0_log.group(1)}")
    assert_one_gpu_per_rank(log, nodes=2, gpus=2, sees_only_its_own=False)  # gpus_per_node


def test_six_nodes_wider_than_the_default(cluster: Cluster) -> None:
    reshape(*SIX_BY_ONE)
    assert nodes_and_gres(cluster) == [f"node{k} gpu:1" for k in range(1, 7)]
    # make train runs the DDP job file on the whole cluster, whatever its shape.
    proc = make("train", f"ARGS={QUICK}", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--nodes=6 --ntasks-per-node=1" in proc.stdout, proc.stdout[:2000]
    submitted = re.search(r"== submitted job (\d+)", proc.stdout)
    assert submitted, proc.stdout
    job = int(submitted.group(1))
    assert cluster.sacct(job) == ["COMPLETED", "6", "0:0"]
    log = cluster.login(f"cat {SHARED}/logs/ddp-train-{job}.out")
    assert_one_gpu_per_rank(log, nodes=6, gpus=1, sees_only_its_own=True)
    # Dynamic nodes keep the order they joined in; they join in order, so lists read node[1-6].
    assert cluster.login(f"sacct -X -n -P -j {job} -o NodeList").strip() == "node[1-6]"


def test_scale_down_and_up_keeps_every_job_and_record(cluster: Cluster) -> None:
    reshape(*SIX_BY_ONE)
    before = cluster.login("sacct -X -n -P -S now-1days -o JobID").split()
    # Every job holds its nodes' GPU, as training does (a CPU-only job would fit beside them).
    gpu_job = "-o /dev/null --gpus-per-node=1"
    sleep_job = f"{gpu_job} --requeue --wrap 'srun sleep 20'"
    filler = cluster.submit(f"-N4 {sleep_job}")  # node1-4: the lowest come first
    cluster.wait_for("the filler to run", lambda: cluster.queued_state(filler) == "RUNNING")
    on_removed = cluster.submit(f"-N2 {sleep_job}")  # node5-6, removed below
    cluster.wait_for("a job on node5-6", lambda: cluster.queued_state(on_removed) == "RUNNING")
    assert cluster.login(f"squeue -h -j {on_removed} -o %N").strip() == "node[5-6]"
    queued = cluster.submit(f"-N4 {gpu_job} --wrap 'srun hostname'")  # waits for the filler
    assert cluster.queued_state(queued) == "PENDING"

    out = reshape("NODES=4", target="scale")
    assert f"requeueing job {on_removed}" in out, out
    assert nodes_and_gres(cluster) == [f"node{k} gpu:1" for k in range(1, 5)]
    out = reshape("NODES=5", target="scale")
    assert "cluster ready: 5 nodes up" in out, out

    for job in (filler, on_removed, queued):
        assert cluster.wait_done(job, timeout=300)[0] == "COMPLETED", job
    restarts = cluster.login(f"sacct -X -n -P -j {on_removed} -o Restarts").strip()
    assert restarts == "1", "the job on a removed node runs again, once"
    after = cluster.login("sacct -X -n -P -S now-1days -o JobID").split()
    assert set(before) | {str(filler), str(on_removed), str(queued)} <= set(after)
    assert nodes_and_gres(cluster) == [f"node{k} gpu:1" for k in range(1, 6)]
