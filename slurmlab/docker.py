"""Docker and Compose, as the CLI drives them: the compose command, the cluster's containers."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from slurmlab import resources
from slurmlab.errors import SlurmlabError

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
PROJECT_DIR_LABEL = "io.slurmlab.project-dir"  # set in docker-compose.yml


@cache
def compose_command() -> tuple[str, ...]:
    """$COMPOSE if set, else the Docker Compose v2 plugin if present, else docker-compose (v1)."""
    if os.environ.get("COMPOSE"):
        return tuple(shlex.split(os.environ["COMPOSE"]))
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ("docker", "compose") if v2.returncode == 0 else ("docker-compose",)


def run(
    args: Sequence[str], env: Mapping[str, str] | None = None, check: bool = False, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), env=dict(env) if env is not None else None, text=True, check=check, **kwargs
    )  # type: ignore[call-overload]


def output(args: Sequence[str]) -> str:
    """stdout of a docker command that must work (listing containers, images)."""
    proc = run(args, capture_output=True)
    if proc.returncode != 0:
        said = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise SlurmlabError(
            f"`{shlex.join(args)}` failed: {said[0]}. Is the Docker daemon running and yours to "
            "use (docker info)?",
            exit_code=1,
        )
    return proc.stdout


@dataclass(frozen=True)
class Container:
    cluster: str  # its Compose project
    service: str
    running: bool
    project_dir: str  # the io.slurmlab.project-dir label: the project it was started for


def containers(project: str | None = None) -> list[Container]:
    """The containers of one cluster (Compose project), or of every slurmlab cluster."""
    label = f"{PROJECT_LABEL}={project}" if project else PROJECT_DIR_LABEL
    fmt = (
        f'{{{{.Label "{PROJECT_LABEL}"}}}}\t{{{{.Label "{SERVICE_LABEL}"}}}}\t{{{{.State}}}}\t'
        f'{{{{.Label "{PROJECT_DIR_LABEL}"}}}}'
    )
    rows = output(["docker", "ps", "-a", "--filter", f"label={label}", "--format", fmt])
    found = []
    for row in rows.splitlines():
        cluster, service, state, project_dir = [*row.split("\t"), "", "", ""][:4]
        found.append(Container(cluster, service, state == "running", project_dir))
    return found


def image_id(image: str) -> str | None:
    proc = run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def image_label(image: str, label: str) -> str | None:
    proc = run(
        ["docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{label}"}}}}', image],
        capture_output=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def run_script(name: str, *args: str, env: Mapping[str, str]) -> int:
    """Run one of scripts/ (the cluster operations) with the given environment; its status."""
    return run(["bash", str(resources.script(name)), *args], env=env).returncode


def base_env() -> dict[str, str]:
    """The environment for scripts and Compose: .env's settings under the caller's environment."""
    return {**resources.env_defaults(), **os.environ}
