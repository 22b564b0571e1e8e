"""One project's cluster: what `slurmlab up`, `exec`, `status`, `down` ... do to it.

Cluster operations that need Slurm (reshaping with jobs running, waiting for nodes) are the
scripts in scripts/, which `make` ran before the CLI existed; this module gives them the
cluster's environment (Compose project, files, shape, image) and checks everything it can
before any of them runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from slurmlab import deps, docker, images, resources
from slurmlab.config import Shape, ShapeRequest, Style, read_recorded_shape, resolve_shape
from slurmlab.errors import SlurmlabError
from slurmlab.project import Project

JOB_USER = "slurmlab"  # the image's unprivileged job user (images/Dockerfile)
LOGIN_SERVICE = "slurmctld"  # the controller is also the login and submit host


@dataclass
class Cluster:
    project: Project
    style: Style

    @property
    def name(self) -> str:
        return self.project.name

    # ---- state -------------------------------------------------------------------------------

    def recorded(self) -> dict[str, str]:
        return read_recorded_shape(self.project.shape_file)

    def shape(self, request: ShapeRequest | None = None) -> Shape:
        return resolve_shape(
            request or ShapeRequest(), self.project.config, self.recorded(), self.style
        )

    def requirements(self) -> deps.Requirements | None:
        if self.project.is_slurmlab_checkout:  # the cluster image is its environment
            return None
        config = self.project.config
        return deps.resolve(
            self.project.dir,
            config.requirements,
            f"requirements: {config.requirements} in {config.path}",
        )

    @staticmethod
    def image_for(requirements: deps.Requirements | None) -> str:
        """The image `up` starts: the cluster image, or its layer of the project's dependencies."""
        if requirements is None:
            return resources.setting("SLURMLAB_IMAGE")
        return images.deps_tag(requirements)

    def recorded_image(self) -> str:
        """The image the cluster was last started with."""
        return self.recorded().get("IMAGE") or resources.setting("SLURMLAB_IMAGE")

    def current_shape(self) -> Shape:
        """The shape the cluster was last given (else .env's), unchecked: enough to reach,
        stop or remove it whatever slurmlab.yaml asks for now."""
        recorded = self.recorded()
        try:
            return Shape(
                nodes=int(recorded.get("NODES") or resources.setting("SLURMLAB_NODES")),
                gpus_per_node=int(
                    recorded.get("GPUS_PER_NODE") or resources.setting("SLURMLAB_GPUS_PER_NODE")
                ),
                gpu_mode=recorded.get("GPU_MODE") or resources.setting("SLURMLAB_GPU_MODE"),
            )
        except ValueError:
            return Shape(nodes=1, gpus_per_node=1, gpu_mode="emulated")

    def env(self, shape: Shape | None = None, image: str | None = None) -> dict[str, str]:
        """The environment Compose and scripts/ run this cluster with."""
        shape = shape or self.current_shape()
        project = self.project
        files = [str(resources.compose_file())]
        if project.gpu_override.is_file():
            files.append(str(project.gpu_override))
        return {
            **docker.base_env(),
            "COMPOSE": shlex.join(docker.compose_command()),
            "COMPOSE_PROJECT_NAME": project.name,
            "COMPOSE_FILE": ":".join(files),
            "SLURMLAB_PROJECT_DIR": str(project.dir),
            "SLURMLAB_PROJECT_MOUNT": project.mount,
            "SLURMLAB_HOST_DIR": str(project.state_root),
            "SHARED_HOST_DIR": str(project.shared_host_dir),
            "SHAPE_FILE": str(project.shape_file),
            "GPU_OVERRIDE": str(project.gpu_override),
            "SLURMLAB_NODES": str(shape.nodes),
            "SLURMLAB_GPUS_PER_NODE": str(shape.gpus_per_node),
            "SLURMLAB_GPU_MODE": shape.gpu_mode,
            "SLURMLAB_IMAGE": image or self.recorded_image(),
            "SLURMLAB_SAY_SCALE": f"{self.style.scale} {self.style.nodes('')}",
        }

    def containers(self) -> list[docker.Container]:
        return docker.containers(self.name)

    def is_running(self) -> bool:
        return any(c.service == LOGIN_SERVICE and c.running for c in self.containers())

    def require_running(self) -> None:
        if not self.is_running():
            raise SlurmlabError(
                f"no cluster of project {self.project.dir} is running (cluster {self.name}): "
                f"start it with {self.style.up}",
                exit_code=1,
            )

    def check_name_is_ours(self) -> None:
        """Refuse a name that another project's cluster already uses."""
        for container in self.containers():
            if container.project_dir not in ("", ".", str(self.project.dir)):
                raise SlurmlabError(
                    f"the cluster name {self.name} is taken by the cluster of "
                    f"{container.project_dir}: give this project another name (--name, or name: "
                    "in slurmlab.yaml), or remove that cluster (slurmlab clean, run there)"
                )

    def script(self, name: str, *args: str, env: dict[str, str]) -> int:
        return docker.run_script(name, *args, env=env)

    # ---- commands ----------------------------------------------------------------------------

    def build(self) -> str:
        """The images this cluster runs, built where missing or stale; return the one it runs."""
        requirements = self.requirements()  # checked before the (long) cluster image build
        images.check_docker(docker.base_env())
        return self.build_images(requirements)

    def build_images(self, requirements: deps.Requirements | None) -> str:
        env = docker.base_env()
        base = images.ensure_cluster_image(env)
        if requirements is None:
            return base
        return images.ensure_deps_image(requirements, base, env)

    def up(self, request: ShapeRequest) -> int:
        shape = self.shape(request)
        requirements = self.requirements()  # a missing or unusable file: refused before builds
        images.check_docker(docker.base_env())
        self.check_name_is_ours()
        image = self.build_images(requirements)
        self.prepare_state_dir()
        status = self.script("up.sh", env=self.env(shape, image))
        if status == 0:
            self.print_where()
        return status

    def scale(self, request: ShapeRequest) -> int:
        self.require_running()
        shape = self.shape(request)
        recorded = self.recorded().get("GPUS_PER_NODE")
        if recorded and int(recorded) != shape.gpus_per_node:
            raise SlurmlabError(
                f"{self.style.scale} changes the node count only; this cluster has {recorded} "
                f"GPU(s) per node: {self.style.up} {self.style.gpus_per_node(shape.gpus_per_node)} "
                "reshapes it"
            )
        return self.script("up.sh", env=self.env(shape))

    def print_config(self, request: ShapeRequest) -> int:
        shape = self.shape(request)
        image = self.image_for(self.requirements())
        return self.script("up.sh", "--config", env=self.env(shape, image))

    def down(self) -> int:
        status = docker.run(
            [*docker.compose_command(), "down", "--remove-orphans"], env=self.env()
        ).returncode
        if status == 0:
            print(f"== cluster {self.name} stopped (state, accounting and shared files kept)")
        return status

    def clean(self) -> int:
        """Remove the cluster and everything it holds: containers, volumes, its shared files.
        The project's own files are not touched."""
        env = self.env()
        compose = docker.compose_command()
        status = docker.run([*compose, "down", "--volumes", "--remove-orphans"], env=env).returncode
        if status != 0:
            return status
        state = self.project.state_dir
        if state.exists():
            shutil.rmtree(state, ignore_errors=True)
        if state.exists():
            # Jobs wrote the shared files as the job user; where that is not us, remove as root.
            docker.run(
                [
                    "docker",
                    "run",
                    "--rm",
                    "--entrypoint",
                    "rm",
                    "-v",
                    f"{state.parent}:/host",
                    resources.setting("SLURMLAB_IMAGE"),
                    "-rf",
                    f"/host/{state.name}",
                ],
                check=True,
                capture_output=True,
            )
        root = self.project.state_root
        if root.is_dir() and {p.name for p in root.iterdir()} <= {".gitignore"}:
            shutil.rmtree(root)
        print(f"== cluster {self.name} removed with all its state")
        return 0

    def status(self) -> int:
        self.require_running()
        self.print_where()
        print()
        return self.script("status.sh", env=self.env())

    def exec(self, command: list[str], cwd: Path) -> int:
        """Run a command on the login node as the job user, in the folder that mirrors cwd."""
        if not command:
            raise SlurmlabError("slurmlab exec needs a command: slurmlab exec -- sbatch job.sbatch")
        self.require_running()
        return self._login(["bash", "-lc", 'exec "$@"', "slurmlab-exec", *command], cwd)

    def shell(self, cwd: Path) -> int:
        self.require_running()
        return self._login(["bash", "-l"], cwd)

    def _login(self, command: list[str], cwd: Path) -> int:
        tty = [] if sys.stdin.isatty() and sys.stdout.isatty() else ["-T"]
        args = [
            *docker.compose_command(),
            "exec",
            *tty,
            "-u",
            JOB_USER,
            "-w",
            self.project.mount_of(cwd),
            LOGIN_SERVICE,
            *command,
        ]
        return docker.run(args, env=self.env()).returncode

    def logs(self, job: str | None, follow: bool = True) -> int:
        self.require_running()
        env = self.env()
        if job is not None:
            return self.script("job-log.sh", job, env={**env, "FOLLOW": "1" if follow else "0"})
        args = ["logs", "--no-color", "--tail=200", *(["-f"] if follow else [])]
        return docker.run([*docker.compose_command(), *args], env=env).returncode

    def print_env(self) -> int:
        """Shell lines that point Docker Compose at this cluster: eval "$(slurmlab env)"."""
        env = self.env()
        for key in (
            "COMPOSE_PROJECT_NAME",
            "COMPOSE_FILE",
            "SLURMLAB_PROJECT_DIR",
            "SLURMLAB_PROJECT_MOUNT",
            "SLURMLAB_HOST_DIR",
            "SLURMLAB_IMAGE",
            "SLURMLAB_NODES",
            "SLURMLAB_GPUS_PER_NODE",
            "SLURMLAB_GPU_MODE",
            "SLURMLAB_SHARED",
            "SHARED_HOST_DIR",
        ):
            print(f"export {key}={shlex.quote(env[key])}")
        return 0

    # ---- helpers -----------------------------------------------------------------------------

    def prepare_state_dir(self) -> None:
        """The cluster's folder on the host, made by us (not by Docker, as root) and given to
        the project's owner; its own .gitignore keeps it out of the project's git."""
        root = self.project.state_root
        created = [
            p
            for p in (root, self.project.state_dir, self.project.shared_host_dir)
            if not p.exists()
        ]
        self.project.shared_host_dir.mkdir(parents=True, exist_ok=True)
        ignore = root / ".gitignore"
        if root.is_relative_to(self.project.dir) and not ignore.exists():
            ignore.write_text("# Written by slurmlab: the clusters' state, never committed.\n*\n")
            created.append(ignore)
        owner = self.project.dir.stat()
        if os.geteuid() == 0 and owner.st_uid != 0:  # e.g. CI running slurmlab as root
            for path in created:
                os.chown(path, owner.st_uid, owner.st_gid)

    def print_where(self) -> None:
        project = self.project
        mounted = "the same path" if project.mount == str(project.dir) else project.mount
        print(f"== cluster {self.name}: {self.current_shape().describe()}")
        print(f"   project:       {project.dir} (on the cluster at {mounted})")
        print(
            f"   shared files:  {project.shared_host_dir} (on the cluster at "
            f"{resources.setting('SLURMLAB_SHARED')})"
        )
        print(f"   login shell:   {self.style.shell}")


def list_clusters() -> int:
    """Every slurmlab cluster on this host: name, project folder, running containers."""
    rows: dict[str, list[docker.Container]] = {}
    for container in docker.containers():
        rows.setdefault(container.cluster, []).append(container)
    if not rows:
        print("no slurmlab cluster on this host (start one with slurmlab up)")
        return 0
    print(f"{'CLUSTER':<36} {'NODES':>5} {'STATE':<8} PROJECT")
    for name, found in sorted(rows.items()):
        nodes = sum(c.service.startswith("node") and c.running for c in found)
        up = any(c.service == LOGIN_SERVICE and c.running for c in found)
        state = "running" if up else "stopped"
        print(f"{name:<36} {nodes:>5} {state:<8} {found[0].project_dir}")
    return 0
