"""One project's cluster: what `slurmlab up`, `exec`, `status`, `down` ... do to it.

The CLI holds the cluster's state (slurmlab.state: shape, images, what Compose was started
with), decides what must change, and makes every Docker call; inside the containers run only
their entrypoint, their healthcheck and the Slurm commands it asks for. Readiness is the
containers' own healthchecks (images/runtime/healthcheck.sh), the one definition of "ready".
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from slurmlab import deps, docker, facts, images, resources, state
from slurmlab.config import Shape, ShapeRequest, Style, resolve_shape
from slurmlab.errors import SlurmlabError
from slurmlab.project import Project
from slurmlab.slurm import Controller

READY_TIMEOUT_S = 180
# Compose reads these from the CLI's environment (docker-compose.yml); `slurmlab env` prints them.
COMPOSE_VARIABLES = (
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_FILE",
    "SLURMLAB_PROJECT_DIR",
    "SLURMLAB_PROJECT_MOUNT",
    "SLURMLAB_HOST_DIR",
    "SLURMLAB_SHARED",
    "SLURMLAB_SLURM_IMAGE",
    "SLURMLAB_IMAGE",
    "SLURMLAB_NODES",
    "SLURMLAB_GPUS_PER_NODE",
    "SLURMLAB_GPU_MODE",
    "SLURMLAB_MAX_NODES",
    "SLURMLAB_RUNTIME_DIGEST",
)


@dataclass
class Cluster:
    project: Project
    style: Style

    @property
    def name(self) -> str:
        return self.project.name

    # ---- what it is and should be ------------------------------------------------------------

    def recorded(self) -> state.Recorded:
        return state.load(self.project.state_dir)

    def shape(self, request: ShapeRequest | None = None) -> Shape:
        return resolve_shape(
            request or ShapeRequest(), self.project.config, self.recorded(), self.style
        )

    def current_shape(self) -> Shape:
        """The shape the cluster was last given (else .env's), unchecked: enough to reach,
        stop or remove it whatever slurmlab.yaml asks for now."""
        recorded = self.recorded()
        try:
            return Shape(
                nodes=recorded.nodes or int(facts.setting("SLURMLAB_NODES")),
                gpus_per_node=recorded.gpus_per_node
                or int(facts.setting("SLURMLAB_GPUS_PER_NODE")),
                gpu_mode=recorded.gpu_mode or facts.setting("SLURMLAB_GPU_MODE"),
            )
        except ValueError:
            return Shape(nodes=1, gpus_per_node=1, gpu_mode="emulated")

    @property
    def stack(self) -> str:
        if self.project.is_slurmlab_checkout:  # the trainer's own cluster
            return "trainer"
        return self.project.config.stack or "base"

    def requirements(self) -> deps.Requirements | None:
        if self.project.is_slurmlab_checkout:  # the trainer image is its environment
            return None
        config = self.project.config
        return deps.resolve(
            self.project.dir,
            config.requirements,
            f"requirements: {config.requirements} in {config.path}",
        )

    def planned_images(self) -> images.ClusterImages:
        """The images `up` would start (computed from the inputs; nothing is built)."""
        return images.cluster_images(self.stack, self.requirements())

    def compose_env(
        self, shape: Shape, slurm_image: str, image: str, override: Path | None = None
    ) -> dict[str, str]:
        """The environment Compose runs this cluster with."""
        project = self.project
        files = [str(resources.compose_file())]
        override = override or (project.gpu_override if shape.gpu_mode == "nvidia" else None)
        if override is not None:
            files.append(str(override))
        return {
            **facts.env_defaults(),
            **os.environ,
            "COMPOSE_PROJECT_NAME": project.name,
            "COMPOSE_FILE": ":".join(files),
            "SLURMLAB_PROJECT_DIR": str(project.dir),
            "SLURMLAB_PROJECT_MOUNT": project.mount,
            "SLURMLAB_HOST_DIR": str(project.state_root),
            "SLURMLAB_SHARED": facts.shared_root(),
            "SLURMLAB_SLURM_IMAGE": slurm_image,
            "SLURMLAB_IMAGE": image,
            "SLURMLAB_NODES": str(shape.nodes),
            "SLURMLAB_GPUS_PER_NODE": str(shape.gpus_per_node),
            "SLURMLAB_GPU_MODE": shape.gpu_mode,
            "SLURMLAB_MAX_NODES": str(facts.max_nodes()),
            "SLURMLAB_RUNTIME_DIGEST": resources.runtime_digest(),
        }

    def current_env(self) -> dict[str, str]:
        """The environment of the cluster as it was last started (to reach, stop or remove it)."""
        recorded = self.recorded()
        slurm_image, image = recorded.slurm_image, recorded.image
        if slurm_image is None or image is None:
            planned = images.cluster_images(self.stack, None)
            slurm_image, image = planned.slurm_tag, planned.cluster_tag
        return self.compose_env(self.current_shape(), slurm_image, image)

    def containers(self) -> list[docker.Container]:
        return docker.containers(self.name)

    def service(self, name: str) -> docker.Container | None:
        return next((c for c in self.containers() if c.service == name and c.running), None)

    def login_node(self) -> docker.Container:
        login = self.service(facts.LOGIN_SERVICE)
        if login is None:
            raise SlurmlabError(
                f"no cluster of project {self.project.dir} is running (cluster {self.name}): "
                f"start it with {self.style.up}",
                exit_code=1,
            )
        return login

    def controller(self) -> Controller:
        return Controller(self.login_node())

    def check_name_is_ours(self, found: list[docker.Container]) -> None:
        """Refuse a name that another project's cluster already uses."""
        for container in found:
            if container.project_dir not in ("", ".", str(self.project.dir)):
                raise SlurmlabError(
                    f"the cluster name {self.name} is taken by the cluster of "
                    f"{container.project_dir}: give this project another name (--name, or name: "
                    "in slurmlab.yaml), or remove that cluster (slurmlab clean, run there)"
                )

    # ---- up, scale -----------------------------------------------------------------------------

    def build(self) -> str:
        """The images this cluster runs, built where missing; return the one it runs."""
        planned = self.planned_images()
        images.ensure(planned.layers)
        return planned.cluster_tag

    def up(self, request: ShapeRequest) -> int:
        shape = self.shape(request)
        planned = self.planned_images()  # a missing or unusable requirements file: refused here
        found = self.containers()
        self.check_name_is_ours(found)
        wanted = Target(self, shape, planned.slurm_tag, planned.cluster_tag)
        if wanted.is_running(found, self.recorded()):
            print(f"== cluster {self.name} is up: {shape.describe()}, nothing to change")
            self.print_where()
            return 0
        docker.check_docker()
        images.ensure(planned.layers)
        return self.apply(wanted, found)

    def scale(self, request: ShapeRequest) -> int:
        self.login_node()
        shape = self.shape(request)
        recorded = self.recorded()
        if recorded.gpus_per_node and recorded.gpus_per_node != shape.gpus_per_node:
            raise SlurmlabError(
                f"{self.style.scale} changes the node count only; this cluster has "
                f"{recorded.gpus_per_node} GPU(s) per node: {self.style.up} "
                f"{self.style.gpus_per_node(shape.gpus_per_node)} reshapes it"
            )
        env = self.current_env()
        wanted = Target(self, shape, env["SLURMLAB_SLURM_IMAGE"], env["SLURMLAB_IMAGE"])
        found = self.containers()
        if wanted.is_running(found, recorded):
            print(f"== cluster {self.name} already has {shape.describe()}")
            return 0
        return self.apply(wanted, found)

    def apply(self, wanted: Target, found: list[docker.Container]) -> int:
        """Bring the cluster to `wanted`: remove what does not belong, start what is missing."""
        self.prepare_state_dir()
        recorded = self.recorded()
        env = wanted.env()
        login = next((c for c in found if c.service == facts.LOGIN_SERVICE and c.running), None)
        if login is not None:
            self.check_restart_loses_no_job(Controller(login), wanted, found)
        extra_containers = [
            c.service for c in found if (facts.node_index(c.service) or 0) > wanted.shape.nodes
        ]
        reshaping = bool(extra_containers) or (
            recorded.nodes is not None
            and (recorded.nodes, recorded.gpus_per_node)
            != (wanted.shape.nodes, wanted.shape.gpus_per_node)
        )
        if reshaping:
            # The controller must answer before nodes can be drained, requeued and deleted.
            self.compose(["up", "-d", *facts.CONTROLLER_TIER], env)
            controller = self.controller()
            controller.wait_answering()
            known = controller.nodes()
            gone = {
                name
                for name, gres in known.items()
                if (facts.node_index(name) or 0) > wanted.shape.nodes
                or gres != f"gpu:{wanted.shape.gpus_per_node}"
            }
            self.remove_nodes(
                controller, sorted(gone | set(extra_containers), key=_by_index), known
            )
        self.write_override(wanted)
        print(f"== cluster {self.name}: {wanted.shape.describe()}", flush=True)
        self.compose(["up", "-d", "--remove-orphans", *wanted.services], env)
        state.save(
            self.project.state_dir,
            state.Recorded(
                nodes=wanted.shape.nodes,
                gpus_per_node=wanted.shape.gpus_per_node,
                gpu_mode=wanted.shape.gpu_mode,
                slurm_image=wanted.slurm_image,
                image=wanted.image,
                compose_digest=wanted.digest(),
            ),
        )
        if reshaping:
            self.warn_unfitting_jobs(wanted.shape.nodes)
        self.wait_ready(wanted)
        self.print_where()
        return 0

    def compose(self, args: list[str], env: dict[str, str]) -> None:
        status = docker.compose(args, env)
        if status != 0:
            raise SlurmlabError(
                f"`{shlex.join(['docker compose', *args])}` failed (see above)", exit_code=status
            )

    def write_override(self, wanted: Target) -> None:
        override = wanted.override()
        path = self.project.gpu_override
        if override is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(override, indent=2) + "\n")

    def check_restart_loses_no_job(
        self, controller: Controller, wanted: Target, found: list[docker.Container]
    ) -> None:
        """A changed image or runtime (images/runtime/, slurm/) has Compose start the containers
        again: refuse while a job runs, which would die."""
        runtime = resources.runtime_digest()
        image_changed = any(c.running and c.image != wanted.image_of(c.service) for c in found)
        runtime_changed = any(c.running and c.runtime != runtime for c in found)
        if not (image_changed or runtime_changed):
            return
        what = (
            f"the cluster's image changed ({wanted.image}: the project's dependencies or "
            "slurmlab's image)"
            if image_changed
            else "the containers' entrypoint, healthcheck or Slurm configuration changed "
            "(images/runtime/, slurm/)"
        )
        jobs = " ".join(job.id for job in controller.running_jobs())
        if jobs:
            raise SlurmlabError(
                f"{what}, so the cluster's containers start again, and job(s) {jobs} run there "
                "now: wait for them (squeue) or scancel them, then run this again. Nothing was "
                "changed."
            )
        print(
            f"== {what}: its containers start again with it (queued jobs, accounting and shared "
            "files are kept)"
        )

    def remove_nodes(self, controller: Controller, nodes: list[str], known: dict[str, str]) -> None:
        """Drain, requeue what runs there, remove the containers, delete the nodes from Slurm.
        Refuses, before changing anything, when a running job there may not be requeued."""
        if not nodes:
            return
        in_slurm = [n for n in nodes if n in known]
        if in_slurm:
            jobs = controller.running_jobs(on=in_slurm)
            stuck = [job.id for job in jobs if not job.requeueable]
            if stuck:
                raise SlurmlabError(
                    f"job(s) {' '.join(stuck)} run on {','.join(in_slurm)} and cannot be "
                    f"requeued (--no-requeue): wait for them (squeue -w {','.join(in_slurm)}) "
                    "or scancel them, then run this again. Nothing was changed."
                )
            print(
                f"== removing {','.join(nodes)}: draining; running jobs are requeued and start "
                "again on the nodes that remain"
            )
            controller.drain(in_slurm, "removed from the cluster's shape")
            for job in jobs:
                print(f"   requeueing job {job.id}")
                controller.requeue(job.id)
            deadline = time.monotonic() + 120
            while controller.jobs(on=in_slurm):
                if time.monotonic() > deadline:
                    raise SlurmlabError(
                        f"jobs still on {','.join(in_slurm)} after 120 s: "
                        + controller.run("squeue", "-w", ",".join(in_slurm)),
                        exit_code=1,
                    )
                time.sleep(0.5)
        # The container goes first: a slurmd still running would register the node again.
        self.compose(["rm", "-s", "-f", *nodes], self.current_env())
        if in_slurm:
            controller.delete_nodes(in_slurm)

    def warn_unfitting_jobs(self, nodes: int) -> None:
        """Jobs still queued that need more nodes than the new shape has wait for them."""
        for job, need in self.controller().pending_node_counts():
            if need > nodes:
                print(
                    f"warning: job {job} needs {need} nodes; it waits until the cluster has them "
                    f"({self.style.scale} {self.style.nodes(need)})",
                    file=sys.stderr,
                )

    def wait_ready(self, wanted: Target, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every container of the shape passes its healthcheck, and Slurm has exactly
        the shape's nodes. A container Docker has not yet seen healthy runs its own
        healthcheck now (Docker's next run is up to an interval away)."""
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            while True:
                mine = {c.service: c for c in self.containers() if c.service in wanted.services}
                pending = [s for s in wanted.services if not (s in mine and mine[s].healthy)]
                checks = [mine[s] for s in pending if s in mine and mine[s].running]
                passed = set(pool.map(_passes_healthcheck, checks)) if checks else set()
                if len(pending) == len(checks) and passed <= {True}:
                    break
                if time.monotonic() - started > timeout_s:
                    raise SlurmlabError(self.not_ready_report(wanted, mine, timeout_s), 1)
                time.sleep(0.5)
        controller = self.controller()
        known = controller.nodes()
        expected = {node: f"gpu:{wanted.shape.gpus_per_node}" for node in wanted.nodes}
        if known != expected:
            raise SlurmlabError(
                f"the cluster's nodes are {known}, expected {expected}: see the daemons' logs "
                "(slurmlab logs)",
                exit_code=1,
            )
        print(
            f"== cluster ready: {wanted.shape.nodes} nodes up with {wanted.shape.gpus_per_node} "
            f"GPU(s) each ({time.monotonic() - started:.0f} s)"
        )
        print(controller.node_table(), end="")

    def not_ready_report(
        self, wanted: Target, mine: dict[str, docker.Container], timeout_s: float
    ) -> str:
        lines = [f"the cluster is not ready after {timeout_s:.0f} s:"]
        for service in wanted.services:
            c = mine.get(service)
            said = "missing" if c is None else f"{'running' if c.running else 'stopped'}"
            lines.append(f"  {service:<10} {said} {c.health if c else ''}")
        login = mine.get(facts.LOGIN_SERVICE)
        if login is not None and login.running:
            lines.append(Controller(login).run("sinfo", "-N", "-o", "%N %t %G %E", check=False))
        lines.append("See README.md#troubleshooting; the daemons' logs: slurmlab logs (make logs)")
        return "\n".join(lines)

    # ---- the other commands --------------------------------------------------------------------

    def print_config(self, request: ShapeRequest) -> int:
        shape = self.shape(request)
        planned = self.planned_images()
        wanted = Target(self, shape, planned.slurm_tag, planned.cluster_tag)
        override = wanted.override()
        with tempfile.TemporaryDirectory(prefix="slurmlab-config-") as folder:
            path = None
            if override is not None:
                path = Path(folder, "compose.gpus.json")
                path.write_text(json.dumps(override))
            return docker.compose(["config"], wanted.env(path))

    def down(self) -> int:
        status = docker.compose(["down", "--remove-orphans"], self.current_env())
        if status == 0:
            print(f"== cluster {self.name} stopped (state, accounting and shared files kept)")
        return status

    def clean(self) -> int:
        """Remove the cluster and everything it holds: containers, volumes, its shared files.
        The project's own files are not touched."""
        env = self.current_env()
        status = docker.compose(["down", "--volumes", "--remove-orphans"], env)
        if status != 0:
            return status
        folder = self.project.state_dir
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            # Jobs wrote the shared files as the job user; where that is not us, remove as root.
            image = env["SLURMLAB_SLURM_IMAGE"]
            if not docker.image_exists(image):
                image = facts.setting("BASE_IMAGE")
            docker.output(
                ["docker", "run", "--rm", "--entrypoint", "rm", "-v",
                 f"{folder.parent}:/host", image, "-rf", f"/host/{folder.name}"],
                f"removing {folder}",
            )  # fmt: skip
        root = self.project.state_root
        if root.is_dir() and {p.name for p in root.iterdir()} <= {".gitignore"}:
            shutil.rmtree(root)
        print(f"== cluster {self.name} removed with all its state")
        return 0

    def status(self) -> int:
        login = self.login_node()
        self.print_where()
        print(flush=True)
        script = (
            "echo '== nodes (sinfo)'; sinfo -N -o '%8N %9P %8t %10G %5c %8m %E'; echo; "
            "echo '== queue (squeue)'; squeue -o '%8i %20j %9u %9T %10M %6D %R'; echo; "
            "echo '== recent jobs (sacct, last 24 h)'; "
            "sacct -X -S now-1days -o 'JobID%-12,JobName%-20,User%-9,State%-12,Elapsed,NNodes,"
            "ExitCode,End'"
        )
        args = docker.exec_args(login, ["bash", "-c", script], user=facts.JOB_USER)
        return docker.run(args).returncode

    def exec(self, command: list[str], cwd: Path) -> int:
        """Run a command on the login node as the job user, in the folder that mirrors cwd."""
        if not command:
            raise SlurmlabError("slurmlab exec needs a command: slurmlab exec -- sbatch job.sbatch")
        return self.login(["bash", "-lc", 'exec "$@"', "slurmlab-exec", *command], cwd)

    def shell(self, cwd: Path) -> int:
        return self.login(["bash", "-l"], cwd)

    def login(self, command: list[str], cwd: Path, **kwargs: object) -> int:
        """A command in a login shell on the login node, as the job user (what `shell` gives)."""
        tty = sys.stdin.isatty() and sys.stdout.isatty()
        args = docker.exec_args(
            self.login_node(),
            command,
            user=facts.JOB_USER,
            workdir=self.project.mount_of(cwd),
        )
        args.insert(2, "-it" if tty else "-i")
        return docker.run(args, **kwargs).returncode

    def logs(self, job: str | None, follow: bool = True) -> int:
        controller = self.controller()
        if job is None:
            args = ["logs", "--no-color", "--tail=200", *(["-f"] if follow else [])]
            return docker.compose(args, self.current_env())
        if not job.replace("_", "").isdigit() or job.count("_") > 1:
            raise SlurmlabError(
                f"'{job}' is not a job id (e.g. {self.style.logs('12')})", exit_code=2
            )
        out = ""
        for word in controller.run("scontrol", "show", "job", job, check=False).split():
            if word.startswith("StdOut="):
                out = word.removeprefix("StdOut=")
        if not out:  # no longer in the controller's memory: from accounting
            accounted = controller.run("sacct", "-X", "-n", "-P", "-j", job, "-o", "StdOut")
            out = (accounted.split() or [""])[0]
        if not out:
            raise SlurmlabError(f"job {job} is unknown to Slurm and to accounting", exit_code=1)
        out = out.replace("%j", job.split("_")[0])
        print(f"== {out}", flush=True)
        reader = ["tail", "-n", "+1", "-F", out] if follow else ["cat", out]
        args = docker.exec_args(controller.container, reader, user=facts.JOB_USER)
        return docker.run(args).returncode

    def print_env(self) -> int:
        """Shell lines that point Docker Compose at this cluster: eval "$(slurmlab env)"."""
        env = self.current_env()
        for key in COMPOSE_VARIABLES:
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
            f"   shared files:  {project.shared_host_dir} (on the cluster at {facts.shared_root()})"
        )
        print(f"   login shell:   {self.style.shell}")


@dataclass
class Target:
    """The cluster `up` or `scale` brings about: a shape on two images."""

    cluster: Cluster
    shape: Shape
    slurm_image: str
    image: str

    @property
    def nodes(self) -> list[str]:
        return [facts.node_name(k) for k in range(1, self.shape.nodes + 1)]

    @property
    def services(self) -> list[str]:
        return [*facts.CONTROLLER_TIER, *self.nodes]

    def image_of(self, service: str) -> str:
        return self.slurm_image if service in facts.ACCOUNTING_TIER else self.image

    def override(self) -> dict[str, object] | None:
        """Real GPUs: node k gets host GPUs (k-1)*G .. k*G-1, each node its own."""
        if self.shape.gpu_mode != "nvidia":
            return None
        g = self.shape.gpus_per_node
        services = {
            node: {
                "runtime": "nvidia",
                "environment": {
                    "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
                    "NVIDIA_VISIBLE_DEVICES": ",".join(str(k * g + i) for i in range(g)),
                },
                "ulimits": {"memlock": -1},  # NCCL pins host memory
            }
            for k, node in enumerate(self.nodes)
        }
        return {"services": services}

    def env(self, override: Path | None = None) -> dict[str, str]:
        return self.cluster.compose_env(self.shape, self.slurm_image, self.image, override)

    def digest(self) -> str:
        """Of everything Compose is started with: its files and the settings it reads."""
        env = self.env()
        h = hashlib.sha256(resources.compose_file().read_bytes())
        h.update(json.dumps(self.override(), sort_keys=True).encode())
        h.update(json.dumps({k: env[k] for k in COMPOSE_VARIABLES}, sort_keys=True).encode())
        return h.hexdigest()

    def is_running(self, found: list[docker.Container], recorded: state.Recorded) -> bool:
        """True when the cluster runs exactly this, every container healthy: `up` has
        nothing to do (and runs no Compose command)."""
        mine = {c.service: c for c in found}
        runtime = resources.runtime_digest()
        return (
            recorded.compose_digest == self.digest()
            and set(mine) == set(self.services)
            and all(
                c.healthy and c.image == self.image_of(service) and c.runtime == runtime
                for service, c in mine.items()
            )
        )


def _by_index(service: str) -> int:
    return facts.node_index(service) or 0


def _passes_healthcheck(container: docker.Container) -> bool:
    """Run the container's own healthcheck command now."""
    test = json.loads(
        docker.output(
            ["docker", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", container.id]
        )
    )
    if not test or test[0] not in ("CMD", "CMD-SHELL"):
        return container.running
    command = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
    proc = docker.run(docker.exec_args(container, command), capture_output=True, timeout=30)
    return proc.returncode == 0


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
        nodes = sum(facts.node_index(c.service) is not None and c.running for c in found)
        up = any(c.service == facts.LOGIN_SERVICE and c.running for c in found)
        state_word = "running" if up else "stopped"
        print(f"{name:<36} {nodes:>5} {state_word:<8} {found[0].project_dir}")
    return 0
