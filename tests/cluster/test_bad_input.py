"""Bad input is refused with a message naming the fix, before anything is submitted or built."""

from __future__ import annotations

import subprocess

import pytest
from conftest import CHECKOUT, PROJECT, Cluster


def job_count(cluster: Cluster) -> int:
    return len(cluster.login("sacct -X -n -P -S now-1days -o JobID").split())


def test_make_up_without_docker_says_how_to_fix_it() -> None:
    proc = subprocess.run(
        [
            "make",
            "up",
            "DOCKER_HOST=unix:///nonexistent/docker.sock",
            f"COMPOSE_PROJECT_NAME={PROJECT}",
        ],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "cannot reach the Docker daemon" in proc.stderr
    assert "Start it" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("batch_size=0", "batch_size: must be >= 1"),
        ("lr=-0.1", "lr"),
        ("model=resnet51", "model"),
        ("epocs=3", "did you mean 'epochs'"),
        ("batch_size=abc", "batch_size"),
        ("epochs", "key=value"),
    ],
)
def test_make_submit_rejects_bad_overrides_before_submitting(
    cluster: Cluster, args: str, message: str
) -> None:
    before = job_count(cluster)
    proc = subprocess.run(
        [
            "make",
            "submit",
            f"COMPOSE_PROJECT_NAME={PROJECT}",
            "JOB=jobs/train_ddp.sbatch",
            f"ARGS={args}",
        ],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "submitted job" not in proc.stdout
    assert job_count(cluster) == before, "nothing may reach the queue"


def test_submitit_rejects_a_bad_config_before_submitting(cluster: Cluster) -> None:
    before = job_count(cluster)
    proc = cluster.run("python jobs/submit.py --no-wait optimizer=adagrad", check=False)
    assert proc.returncode == 2
    assert "optimizer" in proc.stderr
    assert job_count(cluster) == before


def test_unknown_job_file_and_config_name_the_fix(cluster: Cluster) -> None:
    for extra, message in [
        ("JOB=jobs/nope.sbatch", "job file jobs/nope.sbatch not found"),
        ("CONFIG=jobs/configs/nope.yaml", "config jobs/configs/nope.yaml not found"),
    ]:
        proc = subprocess.run(
            ["make", "submit", f"COMPOSE_PROJECT_NAME={PROJECT}", extra],
            cwd=CHECKOUT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
