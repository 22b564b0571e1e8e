"""Bad input is refused with a message naming the fix, before anything is submitted or built."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
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


def cluster_containers() -> list[str]:
    """Every container of the test project, with its id: a refused command changes none."""
    return subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["up", "NODES=0"], "NODES=0: a cluster has 1 to 16 nodes"),
        (["up", "NODES=17"], "NODES=17: a cluster has 1 to 16 nodes"),
        (["up", "NODES=two"], "NODES=two: a cluster has 1 to 16 nodes"),
        (["up", "GPUS_PER_NODE=9"], "GPUS_PER_NODE=9: a node has 1 to 8 GPUs"),
        (["scale", "NODES=20"], "NODES=20: a cluster has 1 to 16 nodes"),
        (["scale", "NODES=4", "GPUS_PER_NODE=2"], "make up GPUS_PER_NODE=2 reshapes it"),
        (["up", "GPUS=1"], "this host has no NVIDIA GPU"),
    ],
    ids=["zero-nodes", "too-many-nodes", "not-a-number", "too-many-gpus", "scale-too-far",
         "scale-changes-gpus", "real-gpus-on-a-host-without"],
)  # fmt: skip
def test_a_shape_that_cannot_be_built_is_refused_before_anything_changes(
    cluster: Cluster, settings: list[str], message: str
) -> None:
    if "GPUS=1" in settings and subprocess.run(["which", "nvidia-smi"]).returncode == 0:
        pytest.skip("this host has NVIDIA GPUs")
    containers = cluster_containers()
    recorded = (cluster.shared_host_dir.parent / "cluster.json").read_text()
    proc = subprocess.run(
        ["make", *settings, f"COMPOSE_PROJECT_NAME={PROJECT}"],
        cwd=CHECKOUT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert cluster_containers() == containers
    assert (cluster.shared_host_dir.parent / "cluster.json").read_text() == recorded
    assert cluster.node_names() == ["node1", "node2", "node3", "node4"]


def test_real_gpu_shape_larger_than_the_host_is_refused_with_a_fake_nvidia_smi(
    tmp_path: Path,
) -> None:
    """No GPU here: a stand-in nvidia-smi lists 4. Each node needs GPUs of its own, so 3 nodes
    x 2 GPUs is refused with a shape that fits; 2 x 2 passes and `make config` shows each node
    its own two host GPUs (what the NVIDIA runtime would hand it)."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\nfor i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 (UUID: $i)"; done\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}

    def make_config(*settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "config", "GPUS=1", *settings, f"COMPOSE_PROJECT_NAME={PROJECT}-gpu"],
            cwd=CHECKOUT, capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip

    refused = make_config("NODES=3", "GPUS_PER_NODE=2")
    assert refused.returncode != 0
    assert "needs 6 GPUs, this host has 4" in refused.stderr, refused.stderr
    assert "NODES=2 GPUS_PER_NODE=2" in refused.stderr
    shown = make_config("NODES=2", "GPUS_PER_NODE=2")
    assert shown.returncode == 0, shown.stderr
    config = yaml.safe_load(shown.stdout)["services"]
    for node, devices in [("node1", "0,1"), ("node2", "2,3")]:
        assert config[node]["runtime"] == "nvidia"
        assert str(config[node]["environment"]["NVIDIA_VISIBLE_DEVICES"]) == devices
        assert str(config[node]["environment"]["SLURMLAB_GPUS_PER_NODE"]) == "2"
