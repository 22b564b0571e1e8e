"""The images a cluster runs, each built once for its content.

    debian:trixie-slim (BASE_IMAGE)   pulled where a registry has it, else built by debootstrap
      slurmlab-slurm:<digest>         Slurm, munge, MariaDB, Python + submitit (images/Dockerfile)
        slurmlab-trainer:<digest>     + slurmlab's trainer stack: torch, torchvision, ...
          slurmlab-test:<digest>      + pytest: the trainer's unit tests (never a cluster's image)
        slurmlab-deps:<digest>        + a project's own requirements, on slurm or on trainer

The accounting tier (mariadb, slurmdbd) runs the Slurm image; the login node and the compute
nodes run the top of the chain the project asks for (its `stack:` and requirements; slurmlab's
own checkout runs the trainer image). Each Python layer is images/python-layer.Dockerfile.

An image's tag is the digest of everything its build reads: Dockerfile, context files, build
arguments and its parent's tag. So "is it built?" is one `docker image inspect` of a tag
computed from the checkout, never a `docker build` relying on its cache, and the same inputs
give the same tag on every machine. With SLURMLAB_REGISTRY set (e.g. ghcr.io/slurmlab), a
missing tag is pulled from <registry>/<repository>:<digest> before it is built; a published
image carries the inputs of the checkout that built it, so a pull can never give other content.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmlab import deps, docker, facts, resources
from slurmlab.errors import SlurmlabError

STACKS = ("base", "trainer")  # what a project's Python starts from (slurmlab.yaml `stack:`)
INPUTS_LABEL = "io.slurmlab.inputs"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # the legacy builder colours a step's stderr
TAG_DIGITS = 16


@dataclass(frozen=True)
class Layer:
    """One image slurmlab builds: its Dockerfile, the files of its context, its arguments."""

    repository: str
    parent: str  # the image it is built FROM
    dockerfile: str
    files: Mapping[str, bytes] = field(default_factory=dict)
    args: Mapping[str, str] = field(default_factory=dict)
    about: str = ""  # what it holds, for messages
    fix: str = ""  # what to do when its build fails
    failure: str = ""  # what a failed build means (default: that it failed)
    failure_exit_code: int = 1  # 2: the user's input is at fault, and nothing was started

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.repository, self.parent, self.dockerfile):
            h.update(part.encode() + b"\0")
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name] + b"\0")
        for key in sorted(self.args):
            h.update(f"{key}={self.args[key]}".encode() + b"\0")
        return h.hexdigest()

    @property
    def tag(self) -> str:
        return f"{self.repository}:{self.digest()[:TAG_DIGITS]}"


@dataclass(frozen=True)
class ClusterImages:
    """The two images a cluster runs: the accounting tier's and everyone else's."""

    slurm: Layer
    cluster: list[Layer]  # the Python layers on top of slurm, bottom first (may be empty)

    @property
    def layers(self) -> list[Layer]:
        return [self.slurm, *self.cluster]

    @property
    def slurm_tag(self) -> str:
        return self.slurm.tag

    @property
    def cluster_tag(self) -> str:
        return self.layers[-1].tag


# ---- the layers ----------------------------------------------------------------------------


def _pip_args() -> dict[str, str]:
    return {
        "PIP_INDEX_URL": facts.setting("PIP_INDEX_URL"),
        "TORCH_INDEX_URL": facts.setting("TORCH_INDEX_URL"),
    }


def extra_ca() -> bytes:
    """EXTRA_CA_BUNDLE's certificates (a TLS-intercepting proxy's CA), trusted in the image."""
    path = facts.setting("EXTRA_CA_BUNDLE")
    if not path:
        return b""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise SlurmlabError(
            f"EXTRA_CA_BUNDLE={path} is not readable ({err.strerror}): fix the path in .env, "
            "or set it empty for no extra certificates"
        ) from err


def slurm_layer() -> Layer:
    images = resources.images_dir()
    return Layer(
        repository="slurmlab-slurm",
        parent=facts.setting("BASE_IMAGE"),
        dockerfile=(images / "Dockerfile").read_text(),
        files={
            "requirements-base.txt": (images / "requirements-base.txt").read_bytes(),
            "extra-ca.pem": extra_ca(),
        },
        args={
            "JOB_USER": facts.JOB_USER,
            "JOB_UID": facts.setting("JOB_UID"),
            **_pip_args(),
        },
        about="Slurm, munge, MariaDB and Python with submitit",
        fix="Check the network to the Debian and PyPI archives (DEBIAN_MIRROR, PIP_INDEX_URL, "
        "EXTRA_CA_BUNDLE in .env)",
    )


def python_layer(
    repository: str, parent: str, requirements: deps.Requirements, about: str, fix: str, **more: Any
) -> Layer:
    """A layer that pip-installs one requirements file (and the files it includes)."""
    return Layer(
        repository=repository,
        parent=parent,
        dockerfile=(resources.images_dir() / "python-layer.Dockerfile").read_text(),
        files={f"requirements/{name}": content for name, content in requirements.files.items()},
        args={"LAYER": repository, "REQUIREMENTS": requirements.main, **_pip_args()},
        about=about,
        fix=fix,
        **more,
    )


def _image_requirements(name: str) -> deps.Requirements:
    path = resources.images_dir() / name
    return deps.Requirements(source=path, files={name: path.read_bytes()}, main=name)


def trainer_layer(parent: str) -> Layer:
    return python_layer(
        "slurmlab-trainer",
        parent,
        _image_requirements("requirements-trainer.txt"),
        "slurmlab's trainer stack (torch, torchvision, ...; the first build downloads ~3 GB)",
        "Check the network to PyPI (PIP_INDEX_URL, TORCH_INDEX_URL, EXTRA_CA_BUNDLE in .env)",
    )


def test_layer(parent: str) -> Layer:
    return python_layer(
        "slurmlab-test",
        parent,
        _image_requirements("requirements-test.txt"),
        "the trainer's test tools (pytest)",
        "Check the network to PyPI (PIP_INDEX_URL in .env)",
    )


def deps_layer(parent: str, requirements: deps.Requirements) -> Layer:
    return python_layer(
        "slurmlab-deps",
        parent,
        requirements,
        f"the project's Python dependencies ({requirements.source.name})",
        f"Fix {requirements.source} (or point requirements: in slurmlab.yaml at the file to "
        "install; false: none), then run slurmlab up again. Nothing was started",
        failure=f"the project's Python dependencies do not install: `pip install -r "
        f"{requirements.source.name}` failed in the cluster's Python ({parent})",
        failure_exit_code=2,
    )


def cluster_images(stack: str, requirements: deps.Requirements | None) -> ClusterImages:
    """What a cluster runs, as layers (nothing is built here)."""
    slurm = slurm_layer()
    layers: list[Layer] = []
    if stack == "trainer":
        layers.append(trainer_layer(slurm.tag))
    if requirements is not None:
        layers.append(deps_layer((layers[-1] if layers else slurm).tag, requirements))
    return ClusterImages(slurm=slurm, cluster=layers)


# ---- building ------------------------------------------------------------------------------


def ensure(images: list[Layer]) -> None:
    """Every layer present, bottom first: pulled from SLURMLAB_REGISTRY or built where missing."""
    docker.check_docker()
    for layer in images:
        if docker.image_exists(layer.tag):
            continue
        if layer.parent == facts.setting("BASE_IMAGE"):
            ensure_base_image()
        if not pull(layer):
            build(layer)


def pull(layer: Layer) -> bool:
    registry = facts.setting("SLURMLAB_REGISTRY").rstrip("/")
    if not registry:
        return False
    remote = f"{registry}/{layer.tag}"
    print(f"== pulling {remote}")
    proc = docker.run(["docker", "pull", remote], capture_output=True, timeout=1800)
    if proc.returncode != 0:
        print(f"   not there ({(proc.stderr.strip().splitlines() or ['?'])[-1]}): building it")
        return False
    docker.output(["docker", "tag", remote, layer.tag])
    return True


def build(layer: Layer) -> None:
    digest = layer.digest()
    log = Path(tempfile.gettempdir()) / f"slurmlab-build-{layer.repository}-{digest[:16]}.log"
    print(f"== building {layer.tag}: {layer.about} (log: {log})", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="slurmlab-build-") as context:
        root = Path(context)
        (root / "Dockerfile").write_text(layer.dockerfile)
        for name, content in layer.files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)
        args = {"PARENT": layer.parent, **layer.args}
        command = ["docker", "build", "--force-rm", "-t", layer.tag]
        command += ["--label", f"{INPUTS_LABEL}={digest}"]
        for key, value in args.items():
            command += ["--build-arg", f"{key}={value}"]
        with log.open("w") as out:
            status = subprocess.run([*command, str(root)], stdout=out, stderr=subprocess.STDOUT)
    if status.returncode != 0:
        lines = [ANSI_ESCAPE.sub("", line) for line in log.read_text().splitlines()]
        said = [line for line in lines if line.lstrip().startswith("ERROR")] or lines[-15:]
        raise SlurmlabError(
            f"{layer.failure or f'building {layer.tag} ({layer.about}) failed'}:\n"
            + "\n".join(f"  {line}" for line in said[-15:])
            + f"\n{layer.fix}. Full log: {log}",
            exit_code=layer.failure_exit_code,
        )
    print(f"== built {layer.tag} ({time.monotonic() - started:.0f} s)", flush=True)


def ensure_base_image() -> None:
    """BASE_IMAGE present: pulled where a registry is reachable, else built from the Debian
    archive with debootstrap and `docker import`ed, so no registry is ever needed."""
    image = facts.setting("BASE_IMAGE")
    if docker.image_exists(image):
        return
    print(f"== {image} is not present: trying to pull it")
    try:
        if docker.run(["docker", "pull", image], capture_output=True, timeout=120).returncode == 0:
            return
    except subprocess.TimeoutExpired:
        pass
    suite, mirror = facts.setting("DEBIAN_SUITE"), facts.setting("DEBIAN_MIRROR")
    print(f"== no registry reachable: building {image} with debootstrap from {mirror}")
    if os.geteuid() != 0:
        raise SlurmlabError(
            f"building {image} without a registry runs debootstrap, which needs root: run "
            f"this once as root (sudo make image), or make the image available (docker pull / "
            f"docker load {image})"
        )
    if shutil.which("debootstrap") is None:
        if shutil.which("apt-get") is None:
            raise SlurmlabError(
                f"debootstrap is needed to build {image} without a registry: install it, or "
                f"make the image available (docker pull / docker load {image})"
            )
        docker.output(["apt-get", "update", "-qq"], "apt-get update")
        docker.output(["apt-get", "install", "-y", "-qq", "debootstrap"], "installing debootstrap")
    with tempfile.TemporaryDirectory(prefix="slurmlab-rootfs-", dir="/var/tmp") as rootfs:
        log = Path(f"{rootfs}.log")
        with log.open("w") as out:
            status = subprocess.run(
                ["debootstrap", "--variant=minbase", suite, rootfs, mirror],
                stdout=out,
                stderr=subprocess.STDOUT,
            ).returncode
        if status != 0:
            tail = "\n".join(log.read_text().splitlines()[-20:])
            raise SlurmlabError(f"debootstrap failed (log: {log}):\n{tail}", exit_code=1)
        log.unlink()
        # Like the official slim image: no package lists or caches in the layer.
        for junk in (Path(rootfs, "var/lib/apt/lists"), Path(rootfs, "var/cache/apt")):
            for path in junk.glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", 'CMD ["bash"]', "--change", "ENV LANG=C.UTF-8",
             "-", image],
            stdin=tar.stdout,
            capture_output=True,
        )  # fmt: skip
        tar.wait()
    if imported.returncode != 0 or tar.returncode != 0:
        raise SlurmlabError(f"docker import of {image} failed: {imported.stderr!r}", exit_code=1)
    print(f"== built {image} locally")
