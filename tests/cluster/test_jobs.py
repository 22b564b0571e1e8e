"""The trainer through Slurm: sbatch (srun and torchrun styles) and submitit, end to end.

Every run here is a real multi-node DDP job on the test cluster: CPU ranks over gloo, SimpleCNN on
the synthetic CIFAR-10-format set (the emulated GPUs give no CUDA).
"""

from __future__ import annotations

import re

import pytest
from conftest import SHARED, Cluster

CONFIG = "jobs/configs/simple_cnn_synthetic.yaml"
ENV = f"CONFIG={CONFIG}"
CHANCE = 10.0  # % accuracy of guessing among 10 classes


def final_val_acc(log: str) -> float:
    match = re.search(r"Final: epoch=\d+ val_acc=([0-9.]+)", log)
    assert match, f"no Final line in the log:\n{log[-3000:]}"
    return float(match.group(1))


def job_log(cluster: Cluster, job: int) -> str:
    return cluster.login(f"cat {SHARED}/tests/logs/{job}.out")


@pytest.fixture(scope="module")
def ddp_job(cluster: Cluster) -> tuple[int, int]:
    return cluster.sbatch(f"--output={SHARED}/tests/logs/%j.out jobs/train_ddp.sbatch", env=ENV)


def test_ddp_sbatch_job_completes_on_four_nodes(cluster: Cluster, ddp_job: tuple[int, int]) -> None:
    job, rc = ddp_job
    log = job_log(cluster, job)
    assert rc == 0, log[-3000:]
    assert cluster.sacct(job) == ["COMPLETED", "4", "0:0"]
    assert re.search(r"Topology: launcher=slurm rank=0 world_size=4 ", log), log[:3000]
    assert "backend=gloo" in log  # emulated GPUs: CUDA sees none, so CPU ranks talk gloo


def test_ddp_sbatch_job_learns_and_leaves_checkpoint_and_curves(
    cluster: Cluster, ddp_job: tuple[int, int]
) -> None:
    job, _ = ddp_job
    log = job_log(cluster, job)
    assert final_val_acc(log) > 2 * CHANCE
    assert re.search(r"Epoch: 0, Batch: \d+, Loss: [0-9.]+, Acc: [0-9.]+%", log)
    assert re.search(r"Epoch 0 - Train Acc: [0-9.]+%, Val Acc: [0-9.]+%", log)
    run_dir = f"{SHARED}/runs/{job}"
    files = cluster.login(f"ls {run_dir} {run_dir}/checkpoints").split()
    assert "curves.png" in files and "metrics.jsonl" in files
    assert any(f.endswith(".pt") for f in files), files
    assert "Checkpoint saved: " + run_dir in log
    # Only rank 0 prints the training log.
    assert log.count("Epoch 0 - Train Acc") == 1


def test_torchrun_variant_trains_on_two_nodes(cluster: Cluster) -> None:
    job, rc = cluster.sbatch(
        f"--output={SHARED}/tests/logs/%j.out jobs/train_torchrun.sbatch", env=ENV
    )
    log = job_log(cluster, job)
    assert rc == 0, log[-3000:]
    assert cluster.sacct(job) == ["COMPLETED", "2", "0:0"]
    assert re.search(r"Topology: launcher=torchrun rank=0 world_size=2 ", log), log[:3000]
    assert final_val_acc(log) > 2 * CHANCE


def test_bad_config_fails_fast_in_sacct_with_its_message(cluster: Cluster) -> None:
    job, rc = cluster.sbatch(
        f"--output={SHARED}/tests/logs/%j.out jobs/train_ddp.sbatch batch_size=0", env=ENV
    )
    assert rc != 0
    state, _, exit_code = cluster.sacct(job)
    assert state == "FAILED"
    assert exit_code != "0:0"
    assert "batch_size" in job_log(cluster, job)


def test_submitit_ddp_job_returns_a_result_for_every_rank(cluster: Cluster) -> None:
    out = cluster.login(
        f"python jobs/submit.py --nodes 4 --timeout-min 20 --config {CONFIG}", timeout=900
    )
    assert re.search(r"job \d+: 4 ranks returned", out), out


def test_submitit_sweep_runs_a_job_array_and_prints_a_table(cluster: Cluster) -> None:
    out = cluster.login(
        f"python jobs/submit.py --timeout-min 20 --config {CONFIG} --sweep lr=0.05,0.1,0.2 "
        "epochs=1",
        timeout=900,
    )
    array = re.search(r"submitted job array (\d+) \(3 tasks\)", out)
    assert array, out
    rows = re.findall(rf"^{array.group(1)}_\d+\s+lr=(\S+) .*\s([0-9.]+)\s+(\d+)$", out, re.M)
    assert sorted(r[0] for r in rows) == ["0.05", "0.1", "0.2"], out
    states = cluster.login(f"sacct -n -X -P -j {array.group(1)} -o State").split()
    assert states == ["COMPLETED"] * 3


def test_submitit_job_interrupted_by_preemption_resumes_and_finishes(cluster: Cluster) -> None:
    out = cluster.login(f"python tests/cluster/submitit_preempt.py --config {CONFIG}", timeout=900)
    assert "interrupted job" in out, out
    result = dict(re.findall(r"^result (\w+)=(.*)$", out, re.M))
    assert result["status"] == "completed", out
    assert result["resumed_from"] not in {"None", ""}, out
    assert result["epochs_completed"] == result["epochs"], out
