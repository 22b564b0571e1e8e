"""Where slurmlab's cluster definition lives.

The cluster definition is docker-compose.yml, .env, slurm/, images/ and scripts/: in a source
checkout they are the checkout's own top-level files; an installed slurmlab carries a copy of
them in the package (slurmlab/cluster, see pyproject.toml). Everything that runs the cluster
reads them from here, so a checkout and an installed CLI start the same cluster.
"""

from __future__ import annotations

import hashlib
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
        if (candidate / COMPOSE_FILE_NAME).is_file() and (candidate / "images").is_dir():
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


def images_dir() -> Path:
    return cluster_dir() / "images"


# In slurm/ but read by the CLI, not by the containers: a changed default site is applied live
# (slurmlab.site), never by starting the containers again.
NOT_RUNTIME = ("slurm/site.yaml",)


def runtime_digest() -> str:
    """Of what every container reads from the cluster definition at start, mounted rather than
    built into an image: images/runtime/ (entrypoint, healthcheck, seff) and slurm/."""
    h = hashlib.sha256()
    top = cluster_dir()
    for folder in (images_dir() / "runtime", top / "slurm"):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.relative_to(top).as_posix() in NOT_RUNTIME:
                continue
            h.update(path.relative_to(top).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def script(name: str) -> Path:
    """One of scripts/: tools that run on the cluster's login node."""
    return cluster_dir() / "scripts" / name
