"""Runs last (file order): `make clean` removes the whole test cluster."""

from __future__ import annotations

import subprocess

from conftest import PROJECT, Cluster, make


def test_teardown_leaves_no_container_running(cluster: Cluster) -> None:
    proc = make("clean")
    assert proc.returncode == 0, proc.stderr
    left = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert left == []
    volumes = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert volumes == [], "make clean must reset state and secrets together"
    assert not cluster.shared_host_dir.exists(), "make clean removes the shared files on the host"
