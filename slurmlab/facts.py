"""The facts about a slurmlab cluster that more than one program needs, each stated once.

The CLI, the tests and the benchmarks import them from here. What the containers need reaches
them as environment variables that the CLI hands to Compose (docker-compose.yml), never as a
second copy; build settings shared with Compose live in .env, read by `setting`.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

from slurmlab import resources
from slurmlab.errors import SlurmlabError

# ---- the cluster's shape -------------------------------------------------------------------

MAX_GPUS_PER_NODE = 8
GPU_MODES = ("emulated", "nvidia")

# ---- services, users and paths -------------------------------------------------------------

# mariadb -> slurmdbd -> slurmctld: each starts once the one before is healthy.
CONTROLLER_TIER = ("mariadb", "slurmdbd", "slurmctld")
ACCOUNTING_TIER = ("mariadb", "slurmdbd")  # they never mount the project
LOGIN_SERVICE = "slurmctld"  # the controller is also the login and submit host
# The REST API (slurmrestd): started after the controller, on the Slurm image like the
# accounting tier, published on the host's 127.0.0.1 only (docker-compose.yml).
REST_SERVICE = "slurmrestd"
SLURM_IMAGE_SERVICES = (*ACCOUNTING_TIER, REST_SERVICE)  # never a project's Python
# The port slurmrestd listens on inside the cluster network; the host's is chosen per cluster
# (SLURMLAB_REST_PORT in .env: the first free one from there).
REST_CONTAINER_PORT = 6820
# The data parser slurmrestd serves (Slurm 24.11's newest): its endpoints are
# /slurm/<version>/... and /slurmdb/<version>/...
REST_API_VERSION = "v0.0.42"
NODE_SERVICE = re.compile(r"^node(\d+)$")
# The image's unprivileged job user (a build argument of images/Dockerfile).
JOB_USER = "slurmlab"
# ClusterName in slurm/slurm.conf: what sacctmgr and sacct call the cluster.
SLURM_CLUSTER = "slurmlab"
# Where every container mounts images/runtime/ (entrypoint, healthcheck; docker-compose.yml).
RUNTIME_MOUNT = "/opt/slurmlab/runtime"
# slurmlab's own checkout is mounted here on every container (another project: at its own path).
CHECKOUT_MOUNT = "/workspace"
# The Compose labels the CLI finds a cluster's containers by.
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
PROJECT_DIR_LABEL = "io.slurmlab.project-dir"  # set in docker-compose.yml
RUNTIME_LABEL = "io.slurmlab.runtime"  # the digest of images/runtime/ a container runs

# ---- Slurm job states (squeue(1), sacct(1) JOB STATE CODES) ----------------------------------

# A job in one of these holds processes on its nodes.
RUNNING_JOB_STATES = ("CONFIGURING", "RUNNING", "SUSPENDED", "COMPLETING")
# A job in one of these has not ended yet; every other state is final.
ACTIVE_JOB_STATES = ("PENDING", "REQUEUED", "RESIZING", *RUNNING_JOB_STATES)


def node_name(index: int) -> str:
    return f"node{index}"


def node_index(service: str) -> int | None:
    """k for a node service nodek, None for any other service."""
    match = NODE_SERVICE.match(service)
    return int(match.group(1)) if match else None


@cache
def max_nodes() -> int:
    """How many nodes a cluster may have: the node services (node1..nodeN) in the compose file.

    The CLI hands the count to the controller, whose slurm.conf bounds its node table with it."""
    services = re.findall(r"^  node(\d+):", resources.compose_file().read_text(), re.M)
    if not services:
        raise SlurmlabError(f"no node services in {resources.compose_file()}", exit_code=1)
    return len(services)


# ---- .env: the build and run settings Compose, the CLI and CI share -------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env-style file (no quoting, # comments), in order."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


@cache
def env_defaults() -> dict[str, str]:
    """The settings in .env: the one source of truth for build and run settings."""
    return read_env_file(resources.cluster_dir() / ".env")


def setting(name: str) -> str:
    """A .env setting; the environment overrides it, as Docker Compose does."""
    value = os.environ.get(name, env_defaults().get(name))
    if value is None:
        raise SlurmlabError(f"{name} is not set in {resources.cluster_dir() / '.env'}", exit_code=1)
    return value


def shared_root() -> str:
    """The cluster's shared filesystem, as jobs see it (SLURMLAB_SHARED)."""
    return setting("SLURMLAB_SHARED")
