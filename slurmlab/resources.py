"""Where slurmlab's cluster definition lives, and its settings.

The cluster definition is docker-compose.yml, .env, slurm/, images/ and scripts/: in a source
checkout they are the checkout's own top-level files; an installed slurmlab carries a copy of
them in the package (slurmlab/cluster, see pyproject.toml). Everything that runs the cluster
reads them from here, so a checkout and an installed CLI start the same cluster.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

from slurmlab.errors import SlurmlabError

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DIR = PACKAGE_DIR / "cluster"
COMPOSE_FILE_NAME = "docker-compose.yml"


@cache
def cluster_dir() -> Path:
    """The folder that holds docker-compose.yml, .env, slurm/, images/ and scripts/."""
    for candidate in (BUNDLED_DIR, PACKAGE_DIR.parent):
        if (candidate / COMPOSE_FILE_NAME).is_file() and (candidate / "scripts").is_dir():
            return candidate
    raise SlurmlabError(
        f"slurmlab's cluster files are missing (looked in {BUNDLED_DIR} and {PACKAGE_DIR.parent}): "
        "reinstall slurmlab (pip install --force-reinstall <slurmlab checkout or URL>)",
        exit_code=1,
    )


def is_source_checkout() -> bool:
    """True when this slurmlab runs from its own checkout (not from an installed copy)."""
    return cluster_dir() == PACKAGE_DIR.parent


def compose_file() -> Path:
    return cluster_dir() / COMPOSE_FILE_NAME


def script(name: str) -> Path:
    return cluster_dir() / "scripts" / name


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
    return read_env_file(cluster_dir() / ".env")


def setting(name: str) -> str:
    """A .env setting; the environment overrides it, as Docker Compose does."""
    value = os.environ.get(name, env_defaults().get(name))
    if value is None:
        raise SlurmlabError(f"{name} is not set in {cluster_dir() / '.env'}", exit_code=1)
    return value


@cache
def max_nodes() -> int:
    """How many nodes a cluster may have: the node services (node1..nodeN) in the compose file.

    Slurm's MaxNodeCount (slurm/slurm.conf) is kept equal to it."""
    services = re.findall(r"^  node(\d+):", compose_file().read_text(), re.M)
    if not services:
        raise SlurmlabError(f"no node services in {compose_file()}", exit_code=1)
    return len(services)
