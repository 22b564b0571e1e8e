"""The trainer through Slurm beyond the README's own commands (tests/cluster/test_readme.py runs
those: the sbatch job files in both styles, submitit on several nodes, the sweep, each checked for
its topology, learning, checkpoint and curves): a bad config, and submitit's own interrupt.

Every run here is a real multi-node DDP job on the test cluster: CPU ranks over gloo, SimpleCNN on
the synthetic CIFAR-10-format set (the emulated GPUs give no CUDA).
"""

from __future__ import annotations

import re

from conftest import SHARED, Cluster

CONFIG = "jobs/configs/simple_cnn_synthetic.yaml"
ENV = f"CONFIG={CONFIG}"


def job_log(cluster: Cluster, job: int) -> str:
    return cluster.login(f"cat {SHARED}/tests/logs/{job}.out")


def test_bad_config_fails_fast_in_sacct_with_its_message(cluster: Cluster) -> None:
    job, rc = cluster.sbatch(
        f"--output={SHARED}/tests/logs/%j.out jobs/train_ddp.sbatch batch_size=0", env=ENV
    )
    assert rc != 0
    state, _, exit_code = cluster.sacct(job)
    assert state == "FAILED"
    assert exit_code != "0:0"
    assert "batch_size" in job_log(cluster, job)


def test_submitit_job_interrupted_by_preemption_resumes_and_finishes(cluster: Cluster) -> None:
    out = cluster.login(f"python tests/cluster/submitit_preempt.py --config {CONFIG}", timeout=900)
    assert "interrupted job" in out, out
    result = dict(re.findall(r"^result (\w+)=(.*)$", out, re.M))
    assert result["status"] == "completed", out
    assert result["resumed_from"] not in {"None", ""}, out
    assert result["epochs_completed"] == result["epochs"], out
