"""The project a cluster is for: its folder, its cluster's name, where the cluster keeps its files.

A project is the folder you run slurmlab from: the nearest folder upwards that holds a
slurmlab.yaml, else the root of the git work tree you stand in, else the current folder.

- The project is mounted on every container at its own absolute path, so paths in job files,
  logs and submitit folders read the same inside and out. slurmlab's own checkout is the
  exception the docs and tests rely on: it is mounted at /workspace.
- Its cluster is named after the folder and a hash of its path (slurmlab-<folder>-<hash>), so
  clusters of projects with the same folder name never share containers, networks or volumes;
  slurmlab's own checkout uses COMPOSE_PROJECT_NAME from .env.
- The cluster's files on the host (its recorded state, GPU override, the shared filesystem behind
  /shared) live in <project>/.slurmlab/<cluster name>/ (SLURMLAB_HOST_DIR in .env), which carries
  its own .gitignore.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from slurmlab import facts, resources
from slurmlab.config import CONFIG_FILE_NAME, ProjectConfig, check_name, load_config
from slurmlab.errors import SlurmlabError

# Paths the cluster's containers need for themselves: a project mounted over one of them (or
# over a folder that holds one) would hide the system, Slurm's state or the job environment.
CONTAINER_PATHS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt/venv", "/proc", "/run",
    "/sbin", "/sys", "/usr", "/var/lib/mysql", "/var/log", "/var/run", "/var/spool",
    f"/home/{facts.JOB_USER}",
)  # fmt: skip


@dataclass(frozen=True)
class Project:
    dir: Path  # on the host, resolved
    config: ProjectConfig
    name: str  # the cluster's name: its Compose project
    mount: str  # the project's path inside the containers
    is_slurmlab_checkout: bool

    @property
    def state_root(self) -> Path:
        root = Path(facts.setting("SLURMLAB_HOST_DIR"))
        return root if root.is_absolute() else (self.dir / root).resolve()

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.name

    @property
    def shared_host_dir(self) -> Path:
        return self.state_dir / "shared"

    @property
    def site_dir(self) -> Path:
        """What the site description makes the containers read (slurmlab.site), mounted at
        /etc/slurmlab/site."""
        return self.state_dir / "site"

    @property
    def gpu_override(self) -> Path:
        """The Compose override that gives nodes the host's GPUs (written by the CLI)."""
        return self.state_dir / "compose.gpus.json"

    def mount_of(self, host_path: Path) -> str:
        """Where a host path inside the project is on the containers (the project's root when
        the path is outside it)."""
        try:
            relative = host_path.resolve().relative_to(self.dir)
        except ValueError:
            return self.mount
        return str(PurePosixPath(self.mount) / relative.as_posix())


def find_root(start: Path) -> Path:
    """The nearest folder upwards with a slurmlab.yaml, else the git work tree's root, else
    start itself."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / CONFIG_FILE_NAME).is_file():
            return folder
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


def default_name(folder: Path) -> str:
    stem = re.sub(r"[^a-z0-9_-]+", "-", folder.name.lower()).strip("-_")[:30] or "project"
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:6]
    return f"slurmlab-{stem}-{digest}"


def check_mount(folder: Path, shared: str) -> None:
    path = PurePosixPath(folder)
    if ":" in str(folder):
        raise SlurmlabError(
            f"the project folder {folder} has a ':' in its path, which Docker cannot mount: "
            "move or link the project to a path without one"
        )
    for reserved in (*CONTAINER_PATHS, shared):
        inner = PurePosixPath(reserved)
        if path == inner or path.is_relative_to(inner) or inner.is_relative_to(path):
            raise SlurmlabError(
                f"the project folder {folder} would be mounted at the same path on the cluster's "
                f"containers, over their own {reserved}: keep the project somewhere else (e.g. "
                "under your home folder) or run slurmlab with --project <a folder below it>"
            )


def open_project(
    cwd: Path,
    project_dir: Path | None = None,
    config_file: Path | None = None,
    name: str | None = None,
) -> Project:
    """The project for this command line: --project, --config and --name, else found from cwd."""
    if project_dir is not None:
        folder = project_dir.resolve()
        if not folder.is_dir():
            raise SlurmlabError(f"--project {project_dir}: no such folder")
    elif config_file is not None:
        folder = config_file.resolve().parent
    else:
        folder = find_root(cwd)
    if config_file is not None:
        if not config_file.is_file():
            raise SlurmlabError(f"--config {config_file}: no such file")
        config = load_config(config_file.resolve())
    elif (folder / CONFIG_FILE_NAME).is_file():
        config = load_config(folder / CONFIG_FILE_NAME)
    else:
        config = ProjectConfig()

    is_checkout = resources.is_source_checkout() and folder == resources.cluster_dir()
    if name is not None:
        cluster_name = check_name(name, f"--name {name}")
    elif config.name is not None:
        cluster_name = config.name
    elif is_checkout:
        cluster_name = check_name(
            facts.setting("COMPOSE_PROJECT_NAME"), "COMPOSE_PROJECT_NAME in .env"
        )
    else:
        cluster_name = default_name(folder)

    if is_checkout:
        mount = facts.CHECKOUT_MOUNT
    else:
        check_mount(folder, facts.shared_root())
        mount = str(folder)
    return Project(
        dir=folder, config=config, name=cluster_name, mount=mount, is_slurmlab_checkout=is_checkout
    )
