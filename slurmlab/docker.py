"""Docker and Compose, as the CLI drives them: every Docker call slurmlab makes goes through here.

Compose starts, reshapes and stops a cluster; everything else talks to the containers with the
docker CLI directly (`docker exec`, `docker ps`), which answers in tens of milliseconds where
Compose v1 takes most of a second to start.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from slurmlab import facts
from slurmlab.errors import SlurmlabError


def run(
    args: Sequence[str], env: Mapping[str, str] | None = None, check: bool = False, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), env=dict(env) if env is not None else None, text=True, check=check, **kwargs
    )  # type: ignore[call-overload]


def output(args: Sequence[str], what: str = "") -> str:
    """stdout of a command that must work; a failure is an error that says what failed."""
    try:
        proc = run(args, capture_output=True)
    except FileNotFoundError as err:
        raise SlurmlabError(f"{args[0]} is not installed: {what or shlex.join(args)}") from err
    if proc.returncode != 0:
        said = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        if args[0] == "docker" and "daemon" in said[0]:
            raise SlurmlabError(
                f"cannot reach the Docker daemon ({said[0]}). Start it (e.g. sudo systemctl "
                "start docker), or check DOCKER_HOST and that your user may use Docker "
                "(docker info)",
                exit_code=1,
            )
        raise SlurmlabError(f"{what or f'`{shlex.join(args)}`'} failed: {said[0]}", exit_code=1)
    return proc.stdout


@cache
def check_docker() -> None:
    """A reachable Docker daemon and Compose, checked once before a command changes anything."""
    output(["docker", "version", "--format", "{{.Server.Version}}"], "asking Docker its version")
    compose_command()


@cache
def compose_command() -> tuple[str, ...]:
    """$COMPOSE if set, else the Docker Compose v2 plugin, else docker-compose (v1).

    Both stay supported: Debian 12, and this project's CI host, ship only v1."""
    if os.environ.get("COMPOSE"):
        return tuple(shlex.split(os.environ["COMPOSE"]))
    if run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    raise SlurmlabError(
        "Docker Compose is missing: install the compose plugin (docker compose) or docker-compose",
        exit_code=1,
    )


def compose(args: Sequence[str], env: Mapping[str, str], **kwargs: object) -> int:
    """Run Compose on the cluster that env describes (COMPOSE_PROJECT_NAME, COMPOSE_FILE)."""
    return run([*compose_command(), *args], env=env, **kwargs).returncode


@dataclass(frozen=True)
class Container:
    id: str
    cluster: str  # its Compose project
    service: str
    running: bool
    health: str  # healthy, unhealthy, starting, or "" without a healthcheck
    image: str  # as Compose gave it (a tag)
    project_dir: str  # the io.slurmlab.project-dir label: the project it was started for
    runtime: str = ""  # the io.slurmlab.runtime label: the digest of images/runtime/ it runs

    @property
    def healthy(self) -> bool:
        return self.running and self.health == "healthy"


def _health(status: str) -> str:
    for word in ("unhealthy", "healthy", "health: starting"):
        if f"({word})" in status:
            return word.removeprefix("health: ")
    return ""


def containers(project: str | None = None) -> list[Container]:
    """The containers of one cluster (Compose project), or of every slurmlab cluster."""
    label = f"{facts.PROJECT_LABEL}={project}" if project else facts.PROJECT_DIR_LABEL
    columns = [
        "{{.ID}}",
        f'{{{{.Label "{facts.PROJECT_LABEL}"}}}}',
        f'{{{{.Label "{facts.SERVICE_LABEL}"}}}}',
        "{{.State}}",
        "{{.Status}}",
        "{{.Image}}",
        f'{{{{.Label "{facts.PROJECT_DIR_LABEL}"}}}}',
        f'{{{{.Label "{facts.RUNTIME_LABEL}"}}}}',
    ]
    rows = output(
        ["docker", "ps", "-a", "--filter", f"label={label}", "--format", "\t".join(columns)],
        "listing the cluster's containers (docker ps)",
    )
    found = []
    for row in rows.splitlines():
        cid, cluster, service, state, status, image, project_dir, runtime = [
            *row.split("	"),
            *[""] * 8,
        ][:8]
        running = state == "running"
        found.append(
            Container(cid, cluster, service, running, _health(status), image, project_dir, runtime)
        )
    return found


def exec_args(
    container: Container,
    command: Sequence[str],
    user: str | None = None,
    workdir: str | None = None,
    interactive: bool = False,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    args = ["docker", "exec"]
    if interactive:
        args.append("-it")
    if user:
        args += ["-u", user]
    if workdir:
        args += ["-w", workdir]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return [*args, container.id, *command]


def image_exists(tag: str) -> bool:
    return run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def image_size_bytes(tag: str) -> int:
    return int(output(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).strip())


def published_ports() -> set[int]:
    """The host ports that running containers publish (any address)."""
    rows = output(["docker", "ps", "--format", "{{.Ports}}"], "listing published ports (docker ps)")
    return {int(port) for port in re.findall(r":(\d+)->", rows)}


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing on this machine listens on host:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
