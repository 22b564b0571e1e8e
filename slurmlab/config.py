"""A project's cluster: its config file (slurmlab.yaml) and the shape the cluster takes.

slurmlab.yaml sits at the root of the user's project; every key is optional:

    name: my-project          # the cluster's name (default: slurmlab-<folder>-<hash of its path>)
    nodes: 2                  # compute nodes node1..nodeN, 1 to 16 (default 4)
    gpus_per_node: 1          # GPUs per node, 1 to 8 (default 1)
    gpu_mode: emulated        # emulated (any machine) or nvidia (the host's GPUs)
    stack: base               # the Python the project's requirements go on: base (Python 3.13
                              # with submitit) or trainer (plus slurmlab's torch stack)
    requirements: requirements.txt   # Python dependencies to install in the cluster's
                              # environment: a requirements file or pyproject.toml; false: none
                              # (default: requirements.txt, else pyproject.toml, when present)
    site: site.yaml           # the site's rules (accounts, users, QOS, partitions, memory):
                              # a site description (slurmlab.site); default: slurmlab's own

Each shape setting is taken from the first place that gives it: the command line, slurmlab.yaml,
the shape the cluster was given last (slurmlab.state), .env's default.
Every value is checked before anything is built or started; an error names the setting as the
user wrote it and how to fix it.
"""

from __future__ import annotations

import difflib
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slurmlab import facts
from slurmlab.errors import SlurmlabError
from slurmlab.facts import GPU_MODES, MAX_GPUS_PER_NODE
from slurmlab.images import STACKS
from slurmlab.state import Recorded

CONFIG_FILE_NAME = "slurmlab.yaml"
KEYS = ("name", "nodes", "gpus_per_node", "gpu_mode", "stack", "requirements", "site")
# A Compose project name: it prefixes the cluster's containers, network and volumes.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class ProjectConfig:
    """slurmlab.yaml, validated. None: the file does not set it."""

    path: Path | None = None
    name: str | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    gpu_mode: str | None = None
    stack: str | None = None
    requirements: str | bool | None = None
    site: str | None = None  # a site description, relative to this file's folder; or "default"


def check_name(name: str, said: str) -> str:
    if not NAME_PATTERN.match(name):
        raise SlurmlabError(
            f"{said}: a cluster name is 1 to 63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit (it names the cluster's containers and volumes)"
        )
    return name


def load_config(path: Path) -> ProjectConfig:
    """Read and validate a slurmlab.yaml."""
    try:
        import yaml
    except ImportError as err:  # the make targets of slurmlab's own checkout need no config file
        raise SlurmlabError(
            f"reading {path} needs PyYAML: install slurmlab with pip (it depends on pyyaml)"
        ) from err
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SlurmlabError(f"cannot read {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise SlurmlabError(f"{path} is not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SlurmlabError(
            f"{path}: expected a mapping of settings (e.g. 'nodes: 2'), got {type(data).__name__}"
        )
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SlurmlabError(
                f"{path}: unknown key '{key}'{hint}; the keys are: {', '.join(KEYS)}"
            )

    def said(key: str) -> str:
        return f"{key}: {data[key]} in {path}"

    def integer(key: str) -> int | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise SlurmlabError(f"{said(key)}: expected a whole number")
        return value

    name = data.get("name")
    if name is not None:
        name = check_name(str(name), said("name"))
    gpu_mode = data.get("gpu_mode")
    if gpu_mode is not None and gpu_mode not in GPU_MODES:
        raise SlurmlabError(f"{said('gpu_mode')}: expected one of {', '.join(GPU_MODES)}")
    stack = data.get("stack")
    if stack is not None and stack not in STACKS:
        raise SlurmlabError(
            f"{said('stack')}: expected base (Python with submitit) or trainer (plus "
            "slurmlab's torch stack)"
        )
    requirements = data.get("requirements")
    if requirements is True:
        raise SlurmlabError(f"{said('requirements')}: name the file, or false for none")
    if requirements is not None and requirements is not False and not isinstance(requirements, str):
        raise SlurmlabError(
            f"{said('requirements')}: expected a file of the project (requirements.txt, "
            "pyproject.toml) or false"
        )
    site = data.get("site")
    if site is not None and (not isinstance(site, str) or not site.strip()):
        raise SlurmlabError(
            f"{said('site')}: expected a site description file of the project (site.yaml) or "
            "default (slurmlab's own)"
        )
    return ProjectConfig(
        path=path,
        site=site,
        name=name,
        nodes=integer("nodes"),
        gpus_per_node=integer("gpus_per_node"),
        gpu_mode=gpu_mode,
        stack=stack,
        requirements=requirements,
    )


@dataclass(frozen=True)
class Style:
    """How errors and hints spell commands and settings: the CLI's flags, or slurmlab's own
    Makefile (make up NODES=2), whose users type make variables."""

    make: bool = False

    @property
    def up(self) -> str:
        return "make up" if self.make else "slurmlab up"

    @property
    def scale(self) -> str:
        return "make scale" if self.make else "slurmlab scale"

    @property
    def shell(self) -> str:
        return "make shell" if self.make else "slurmlab shell"

    @property
    def token(self) -> str:
        return "make token" if self.make else "slurmlab token"

    def lifespan(self, value: object) -> str:
        return f"LIFESPAN={value}" if self.make else f"--lifespan {value}"

    def logs(self, job: str) -> str:
        return f"make logs JOB={job}" if self.make else f"slurmlab logs {job}"

    def nodes(self, value: object) -> str:
        return f"NODES={value}" if self.make else f"--nodes {value}"

    def site(self, value: object) -> str:
        return f"SITE={value}" if self.make else f"--site {value}"

    def user(self, value: object) -> str:
        return f"AS={value}" if self.make else f"--user {value}"

    def gpus_per_node(self, value: object) -> str:
        return f"GPUS_PER_NODE={value}" if self.make else f"--gpus-per-node {value}"

    def gpu_mode(self, mode: str) -> str:
        if self.make:
            return "GPUS=1" if mode == "nvidia" else "GPUS=0"
        return f"--gpu-mode {mode}"


@dataclass(frozen=True)
class Shape:
    nodes: int
    gpus_per_node: int
    gpu_mode: str

    def describe(self) -> str:
        kind = "real" if self.gpu_mode == "nvidia" else "emulated"
        return f"{self.nodes} node(s) x {self.gpus_per_node} GPU(s) ({kind})"


@dataclass(frozen=True)
class ShapeRequest:
    """Shape settings from the command line, as typed (None: not given)."""

    nodes: str | None = None
    gpus_per_node: str | None = None
    gpu_mode: str | None = None


def host_gpu_count() -> int:
    """The host's NVIDIA GPUs, as `nvidia-smi -L` lists them (0 without nvidia-smi)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def resolve_shape(
    request: ShapeRequest,
    config: ProjectConfig,
    recorded: Recorded,
    style: Style,
    host_gpus: Callable[[], int] = host_gpu_count,
) -> Shape:
    """The shape to build: each setting from the first place that gives it, checked."""

    def pick(flag: str | None, said_flag: str, key: str, env_key: str) -> tuple[str, str]:
        if flag is not None:
            return flag, said_flag
        from_file = getattr(config, key)
        if from_file is not None:
            return str(from_file), f"{key}: {from_file} in {config.path}"
        last = getattr(recorded, key)
        if last is not None:
            return str(last), f"{key}={last} (the cluster's last shape)"
        value = facts.setting(env_key)
        return value, f"{env_key}={value} (.env)"

    nodes_raw, nodes_said = pick(
        request.nodes, style.nodes(request.nodes), "nodes", "SLURMLAB_NODES"
    )
    gpus_raw, gpus_said = pick(
        request.gpus_per_node,
        style.gpus_per_node(request.gpus_per_node),
        "gpus_per_node",
        "SLURMLAB_GPUS_PER_NODE",
    )
    mode, mode_said = pick(
        request.gpu_mode, style.gpu_mode(request.gpu_mode or ""), "gpu_mode", "SLURMLAB_GPU_MODE"
    )

    most = facts.max_nodes()
    if not nodes_raw.isdigit() or not 1 <= int(nodes_raw) <= most:
        raise SlurmlabError(
            f"{nodes_said}: a cluster has 1 to {most} nodes (the node services in "
            "docker-compose.yml)"
        )
    if not gpus_raw.isdigit() or not 1 <= int(gpus_raw) <= MAX_GPUS_PER_NODE:
        raise SlurmlabError(f"{gpus_said}: a node has 1 to {MAX_GPUS_PER_NODE} GPUs")
    if mode not in GPU_MODES:
        raise SlurmlabError(f"{mode_said}: the GPU mode is one of {', '.join(GPU_MODES)}")
    nodes, gpus = int(nodes_raw), int(gpus_raw)

    if mode == "nvidia":
        available = host_gpus()
        emulate = style.gpu_mode("emulated")
        if available == 0:
            raise SlurmlabError(
                f"{mode_said} but this host has no NVIDIA GPU (nvidia-smi -L lists none): "
                f"use emulated GPUs ({emulate})"
            )
        if nodes * gpus > available:
            if gpus <= available:
                fits = f"{style.nodes(available // gpus)} {style.gpus_per_node(gpus)}"
            else:
                fits = f"{style.nodes(1)} {style.gpus_per_node(available)}"
            raise SlurmlabError(
                f"{nodes_said} x {gpus_said} needs {nodes * gpus} GPUs, this host has "
                f"{available} (nvidia-smi -L), and each node needs GPUs of its own: choose a "
                f"smaller shape, e.g. {fits}, or emulate GPUs ({emulate})"
            )
    return Shape(nodes=nodes, gpus_per_node=gpus, gpu_mode=mode)
