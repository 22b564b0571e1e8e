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

from slurmlab import accounting, deps, docker, facts, images, resources, state
from slurmlab import site as site_mod
from slurmlab.config import Shape, ShapeRequest, Style, resolve_shape
from slurmlab.errors import SlurmlabError
from slurmlab.project import Project
from slurmlab.site import DEFAULT_SITE, Site
from slurmlab.slurm import Controller, Node

READY_TIMEOUT_S = 180
DEFAULT_TOKEN_LIFESPAN_S = 1800  # scontrol token's own default
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
    "SLURMLAB_CPUS_PER_GPU",
    "SLURMLAB_MEMORY_PER_GPU_MB",
    "SLURMLAB_REST_PORT",
    "SLURMLAB_REST_API",
)
# How far past SLURMLAB_REST_PORT (.env) `up` looks for a free port for a new cluster's REST API.
REST_PORTS_TRIED = 100


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

    def site_source(self, given: str | None = None) -> tuple[str, str]:
        """Which site description the cluster takes, and where that was said: --site, else
        site: in slurmlab.yaml, else the one the cluster was given last, else slurmlab's default.
        A file is an absolute path; "default" is slurmlab's own slurm/site.yaml."""
        config = self.project.config
        if given:
            said = self.style.site(given)
            source = given if given == DEFAULT_SITE else str(Path(given).resolve())
        elif config.site:
            said = f"site: {config.site} in {config.path}"
            base = config.path.parent if config.path else self.project.dir
            source = (
                config.site if config.site == DEFAULT_SITE else str((base / config.site).resolve())
            )
        elif self.recorded().site:
            source = self.recorded().site or DEFAULT_SITE
            said = f"the cluster's site ({source})"
        else:
            return DEFAULT_SITE, "slurmlab's default site"
        if source != DEFAULT_SITE and not Path(source).is_file():
            raise SlurmlabError(
                f"{said}: no such file. Give a site description (slurmlab site import writes one "
                f"from your cluster), or {self.style.site(DEFAULT_SITE)} for slurmlab's own"
            )
        return source, said

    def site(self, given: str | None = None) -> tuple[Site, str]:
        """The site description (checked: every problem named) and its source."""
        source, _ = self.site_source(given)
        path = site_mod.default_site_path() if source == DEFAULT_SITE else Path(source)
        return site_mod.load(path), source

    def recorded_node_offer(self) -> tuple[int, int]:
        """(CPUs, MiB) per GPU the nodes were started with; else the site's."""
        recorded = self.recorded()
        if recorded.cpus_per_gpu and recorded.memory_per_gpu_mb:
            return recorded.cpus_per_gpu, recorded.memory_per_gpu_mb
        try:
            site, _ = self.site()
        except SlurmlabError:
            site = site_mod.load(site_mod.default_site_path())
        return site.cpus_per_gpu, site.memory_per_gpu_mb

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
        self,
        shape: Shape,
        slurm_image: str,
        image: str,
        node_offer: tuple[int, int],
        rest_port: int,
        override: Path | None = None,
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
            "SLURMLAB_CPUS_PER_GPU": str(node_offer[0]),
            "SLURMLAB_MEMORY_PER_GPU_MB": str(node_offer[1]),
            "SLURMLAB_REST_PORT": str(rest_port),
            "SLURMLAB_REST_API": facts.REST_API_VERSION,
        }

    def current_env(self) -> dict[str, str]:
        """The environment of the cluster as it was last started (to reach, stop or remove it)."""
        recorded = self.recorded()
        slurm_image, image = recorded.slurm_image, recorded.image
        if slurm_image is None or image is None:
            planned = images.cluster_images(self.stack, None)
            slurm_image, image = planned.slurm_tag, planned.cluster_tag
        return self.compose_env(
            self.current_shape(),
            slurm_image,
            image,
            self.recorded_node_offer(),
            recorded.rest_port or int(facts.setting("SLURMLAB_REST_PORT")),
        )

    def rest_port(self) -> int:
        """The REST API's port on the host: the one the cluster has, else the first free one
        from SLURMLAB_REST_PORT (.env), so that clusters side by side do not clash."""
        recorded = self.recorded().rest_port
        if recorded and (self.service(facts.REST_SERVICE) or docker.port_is_free(recorded)):
            return recorded
        first = int(facts.setting("SLURMLAB_REST_PORT"))
        taken = docker.published_ports()
        for port in range(first, first + REST_PORTS_TRIED):
            if port not in taken and docker.port_is_free(port):
                return port
        raise SlurmlabError(
            f"no free port for the REST API on 127.0.0.1 in {first}-{first + REST_PORTS_TRIED - 1}"
            ": free one, or set SLURMLAB_REST_PORT (.env, or the environment) to another range"
        )

    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.current_env()['SLURMLAB_REST_PORT']}"

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

    def up(self, request: ShapeRequest, site_given: str | None = None) -> int:
        shape = self.shape(request)
        site, source = self.site(site_given)  # a site file with problems: refused here
        planned = self.planned_images()  # a missing or unusable requirements file: refused here
        found = self.containers()
        self.check_name_is_ours(found)
        wanted = Target(
            self, shape, planned.slurm_tag, planned.cluster_tag, site, source, self.rest_port()
        )
        recorded = self.recorded()
        if wanted.is_running(found, recorded):
            if wanted.site_is_applied(recorded):
                print(f"== cluster {self.name} is up: {shape.describe()}, nothing to change")
            else:
                self.apply_site(wanted, self.controller(), live=True)
                self.record(wanted)
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
        site, source = self.site()
        wanted = Target(
            self,
            shape,
            env["SLURMLAB_SLURM_IMAGE"],
            env["SLURMLAB_IMAGE"],
            site,
            source,
            int(env["SLURMLAB_REST_PORT"]),
        )
        found = self.containers()
        if wanted.is_running(found, recorded):
            print(f"== cluster {self.name} already has {shape.describe()}")
            return 0
        return self.apply(wanted, found)

    def apply(self, wanted: Target, found: list[docker.Container]) -> int:
        """Bring the cluster to `wanted`: remove what does not belong, start what is missing,
        then bring its accounting to the site's."""
        self.prepare_state_dir()
        recorded = self.recorded()
        env = wanted.env()
        login = next((c for c in found if c.service == facts.LOGIN_SERVICE and c.running), None)
        if login is not None:
            controller = Controller(login)
            if not wanted.site_is_applied(recorded) and not wanted.restarts(found):
                # What can change live does, before anything restarts (jobs run through it).
                self.apply_site(wanted, controller, live=True)
            self.check_restart_loses_no_job(controller, wanted, found)
        # Every Slurm container reads these at start (slurm.conf includes the site's part).
        site_mod.write(wanted.site, wanted.shape.nodes, self.project.site_dir)
        extra_containers = [
            c.service for c in found if (facts.node_index(c.service) or 0) > wanted.shape.nodes
        ]
        reshaping = bool(extra_containers) or (
            recorded.nodes is not None
            and (recorded.nodes, recorded.gpus_per_node, recorded.cpus_per_gpu,
                 recorded.memory_per_gpu_mb)
            != (wanted.shape.nodes, wanted.shape.gpus_per_node, wanted.site.cpus_per_gpu,
                wanted.site.memory_per_gpu_mb)
        )  # fmt: skip
        if reshaping:
            # The controller must answer before nodes can be drained, requeued and deleted.
            self.compose(["up", "-d", *facts.CONTROLLER_TIER], env)
            controller = self.controller()
            controller.wait_answering()
            known = controller.nodes()
            gone = {
                name
                for name, node in known.items()
                if (facts.node_index(name) or 0) > wanted.shape.nodes or node != wanted.node
            }
            self.remove_nodes(
                controller, sorted(gone | set(extra_containers), key=_by_index), known
            )
        self.write_override(wanted)
        print(f"== cluster {self.name}: {wanted.shape.describe()}", flush=True)
        self.compose(["up", "-d", "--remove-orphans", *wanted.services], env)
        self.record(wanted, site_applied=False)
        if reshaping:
            self.warn_unfitting_jobs(wanted.shape.nodes)
        self.wait_ready(wanted)
        self.apply_site(wanted, self.controller(), live=False)
        self.record(wanted)
        self.print_where()
        return 0

    def record(self, wanted: Target, site_applied: bool = True) -> None:
        recorded = self.recorded()
        state.save(
            self.project.state_dir,
            state.Recorded(
                nodes=wanted.shape.nodes,
                gpus_per_node=wanted.shape.gpus_per_node,
                gpu_mode=wanted.shape.gpu_mode,
                slurm_image=wanted.slurm_image,
                image=wanted.image,
                compose_digest=wanted.digest(),
                site=wanted.site_source,
                site_digest=wanted.site_digest() if site_applied else recorded.site_digest,
                cpus_per_gpu=wanted.site.cpus_per_gpu,
                memory_per_gpu_mb=wanted.site.memory_per_gpu_mb,
                rest_port=wanted.rest_port,
            ),
        )

    def apply_site(self, wanted: Target, controller: Controller, live: bool) -> None:
        """Bring the running cluster to the site's rules: its users on every container, its
        accounting tree (sacctmgr), its partition features and its part of slurm.conf
        (scontrol reconfigure). Jobs run through it; a removal Slurm refuses while jobs are
        active is named and left for the next `up`."""
        site, nodes, started = wanted.site, wanted.shape.nodes, time.monotonic()
        folder = self.project.site_dir
        new = site_mod.rendered(site, nodes)
        old = {name: site_mod.read_written(folder, name) for name in new}
        if live:
            self.check_site_loses_no_job(controller, site)
            print(f"== applying the site {wanted.site_source} to the running cluster", flush=True)
        if new["users"] != old["users"] or not live:
            site_mod.write(site, nodes, folder)
            if live:  # at start the entrypoint made them
                self.sync_users()
        current = accounting.read_current(controller.sacctmgr_show)
        steps = accounting.plan(site, current, cluster=facts.SLURM_CLUSTER)
        outcome = accounting.apply(steps, controller.sacctmgr)
        for step in outcome.applied:
            print(f"   {step.says}")
        for step, said in outcome.deferred:
            print(
                f"   not yet: {step.says} ({said or 'refused'}); the next {self.style.up} "
                "tries again",
                file=sys.stderr,
            )
        if live:
            wanted_features = site_mod.node_features(site, nodes)
            for node, features in controller.node_features().items():
                if node in wanted_features and set(features) != set(wanted_features[node]):
                    controller.set_features(node, wanted_features[node])
                    print(f"   {node}: features {','.join(wanted_features[node]) or 'none'}")
            site_mod.write(site, nodes, folder)
            if new["slurm.conf"] != old["slurm.conf"]:
                print("   slurm.conf: the site's part changed: scontrol reconfigure", flush=True)
                controller.reconfigure()
        if not live or outcome.applied or new != old:
            changes, took = len(outcome.applied), time.monotonic() - started
            print(
                f"== site {wanted.site_source}: applied ({changes} accounting change(s), "
                f"{took:.1f} s)"
            )

    def check_site_loses_no_job(self, controller: Controller, site: Site) -> None:
        """A partition the site no longer has must hold no job (Slurm would end them)."""
        for partition in controller.partitions():
            if partition.rstrip("*") in site.partitions:
                continue
            jobs = controller.run("squeue", "-h", "-p", partition.rstrip("*"), "-o", "%i").split()
            if jobs:
                raise SlurmlabError(
                    f"the site no longer has partition {partition.rstrip('*')}, and job(s) "
                    f"{' '.join(jobs)} are in it: wait for them (squeue) or scancel them, then "
                    "run this again. Nothing was changed."
                )

    def sync_users(self) -> None:
        """Create the site's new users on every running container that runs jobs or logins."""
        targets = [
            c for c in self.containers()
            if c.running and (c.service == facts.LOGIN_SERVICE or facts.node_index(c.service))
        ]  # fmt: skip
        command = [f"{facts.RUNTIME_MOUNT}/entrypoint.sh", "users"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(
                lambda c: docker.run(docker.exec_args(c, command), capture_output=True), targets
            ))  # fmt: skip
        for container, proc in zip(targets, results, strict=True):
            if proc.returncode != 0:
                raise SlurmlabError(
                    f"creating the site's users on {container.service} failed: "
                    f"{(proc.stderr or proc.stdout).strip()}",
                    exit_code=1,
                )

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
        image_changed, runtime_changed = wanted.image_changed(found), wanted.runtime_changed(found)
        redefined = []
        if runtime_changed:
            # The mounted slurm/ may no longer read with what these containers run (a newer
            # slurmlab); ask the controller with a client configuration that only finds it.
            controller = controller.minimal_client()
        elif not image_changed:
            redefined = [
                name for name, node in controller.nodes().items()
                if (facts.node_index(name) or 0) <= wanted.shape.nodes
                and node.gres == wanted.node.gres and node != wanted.node
            ]  # fmt: skip
        if not (image_changed or runtime_changed or redefined):
            return
        if image_changed:
            what = (
                f"the cluster's image changed ({wanted.image}: the project's dependencies or "
                "slurmlab's image)"
            )
        elif runtime_changed:
            what = (
                "the containers' entrypoint, healthcheck or Slurm configuration changed "
                "(images/runtime/, slurm/)"
            )
        else:
            what = (
                f"the site's nodes now offer {site_mod.format_node(wanted.site)} (nodes: in "
                f"{wanted.site_source}), which a node takes only when it registers again"
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

    def remove_nodes(
        self, controller: Controller, nodes: list[str], known: dict[str, Node]
    ) -> None:
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
        expected = {node: wanted.node for node in wanted.nodes}
        if known != expected:

            def said(nodes: dict[str, Node]) -> str:
                return ", ".join(
                    f"{name} ({n.gres}, {n.cpus} CPUs, {n.memory_mb}M)" for name, n in nodes.items()
                )

            raise SlurmlabError(
                f"the cluster's nodes are {said(known) or 'none'}; expected {said(expected)}: see "
                "the daemons' logs (slurmlab logs)",
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
        site, source = self.site()
        wanted = Target(
            self, shape, planned.slurm_tag, planned.cluster_tag, site, source, self.rest_port()
        )
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

    def exec(self, command: list[str], cwd: Path, user: str | None = None) -> int:
        """Run a command on the login node as the job user (or another of the site's users), in
        the folder that mirrors cwd."""
        if not command:
            raise SlurmlabError("slurmlab exec needs a command: slurmlab exec -- sbatch job.sbatch")
        return self.login(["bash", "-lc", 'exec "$@"', "slurmlab-exec", *command], cwd, user)

    def shell(self, cwd: Path, user: str | None = None) -> int:
        return self.login(["bash", "-l"], cwd, user)

    def login_user(self, user: str | None) -> str:
        """The user to log in as: the job user, or one the cluster's site lists."""
        if user is None or user == facts.JOB_USER:
            return facts.JOB_USER
        site, source = self.site()
        if user not in site.users:
            listed = ", ".join(sorted({facts.JOB_USER, *site.users}))
            raise SlurmlabError(
                f"{self.style.user(user)}: the cluster's site ({source}) has no user {user} (its "
                f"users: {listed}): add {user} under users: in the site file and run "
                f"{self.style.up}"
            )
        return user

    def login(
        self, command: list[str], cwd: Path, user: str | None = None, **kwargs: object
    ) -> int:
        """A command in a login shell on the login node, as the job user (what `shell` gives)."""
        tty = sys.stdin.isatty() and sys.stdout.isatty()
        args = docker.exec_args(
            self.login_node(),
            command,
            user=self.login_user(user),
            workdir=self.project.mount_of(cwd),
        )
        args.insert(2, "-it" if tty else "-i")
        return docker.run(args, **kwargs).returncode

    def token(self, user: str | None, lifespan: str | None) -> int:
        """`slurmlab token`: shell lines that give a REST API caller a token for one user of the
        site (scontrol token, as the controller's root) and the API's address."""
        name = self.login_user(user)
        seconds = lifespan or str(DEFAULT_TOKEN_LIFESPAN_S)
        if not seconds.isdigit() or int(seconds) < 1:
            raise SlurmlabError(
                f"{self.style.lifespan(seconds)}: a token's lifespan is a whole number of seconds, "
                f"1 or more (e.g. {self.style.lifespan(3600)})"
            )
        if self.service(facts.REST_SERVICE) is None:
            self.login_node()  # no cluster at all: say so
            raise SlurmlabError(
                f"the REST API ({facts.REST_SERVICE}) of cluster {self.name} is not running: start "
                f"it with {self.style.up}",
                exit_code=1,
            )
        said = self.controller().run("scontrol", "token", f"username={name}", f"lifespan={seconds}")
        token = said.strip().removeprefix("SLURM_JWT=")
        print(f"export SLURM_JWT={shlex.quote(token)}")
        print(f"export SLURMLAB_REST={shlex.quote(self.rest_url())}")
        return 0

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

    def check_site(self, given: str | None) -> int:
        """`slurmlab site check`: the site checked, what the cluster runs from it and, on a
        running cluster, what `up` would change. Changes nothing."""
        site, source = self.site(given)
        print(f"== site {source}: no problems")
        print(f"   nodes offer {site_mod.format_node(site)}")
        users = ", ".join(
            f"{name} (uid {'of the project owner' if name == facts.JOB_USER else site.uid(name)}, "
            f"default account {user.get('default_account') or user['accounts'][0]})"
            for name, user in site.users.items()
        )
        print(f"   users: {users or 'none'}")
        print("== its part of slurm.conf:")
        print(site_mod.slurm_conf(site), end="")
        login = self.service(facts.LOGIN_SERVICE)
        if login is None:
            return 0
        controller = Controller(login)
        current = accounting.read_current(controller.sacctmgr_show)
        steps = accounting.plan(site, current, cluster=facts.SLURM_CLUSTER)
        print(f"== on the running cluster {self.name}, {self.style.up} would:")
        for step in steps:
            print(f"   {step.says}")
        written = site_mod.read_written(self.project.site_dir, "slurm.conf")
        if written != site_mod.slurm_conf(site):
            print("   apply its part of slurm.conf (scontrol reconfigure)")
        if (site.cpus_per_gpu, site.memory_per_gpu_mb) != self.recorded_node_offer():
            print("   start the nodes again with what they offer (when no job runs)")
        if not steps and written == site_mod.slurm_conf(site):
            print("   nothing: the cluster runs this site")
        return 0

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
        site = self.recorded().site or site_mod.DEFAULT_SITE
        said = (
            f"{site_mod.default_site_path()} (slurmlab's default)" if site == DEFAULT_SITE else site
        )
        print(f"   site:          {said}")
        print(f"   login shell:   {self.style.shell} (another user: {self.style.user('NAME')})")
        print(f"   REST API:      {self.rest_url()} (a token: {self.style.token})")


@dataclass
class Target:
    """The cluster `up` or `scale` brings about: a shape on two images, under a site's rules."""

    cluster: Cluster
    shape: Shape
    slurm_image: str
    image: str
    site: Site
    site_source: str  # "default" or the site file's path
    rest_port: int  # the REST API's on the host's 127.0.0.1

    @property
    def node(self) -> Node:
        """What each node registers with."""
        g = self.shape.gpus_per_node
        return Node(f"gpu:{g}", self.site.node_cpus(g), self.site.node_memory_mb(g))

    def image_changed(self, found: list[docker.Container]) -> bool:
        return any(c.running and c.image != self.image_of(c.service) for c in found)

    def runtime_changed(self, found: list[docker.Container]) -> bool:
        runtime = resources.runtime_digest()
        return any(c.running and c.runtime != runtime for c in found)

    def restarts(self, found: list[docker.Container]) -> bool:
        """Compose will start the running containers again (another image or runtime)."""
        return self.image_changed(found) or self.runtime_changed(found)

    def site_digest(self) -> str:
        return site_mod.digest(self.site, self.shape.nodes)

    def site_is_applied(self, recorded: state.Recorded) -> bool:
        return recorded.site == self.site_source and recorded.site_digest == self.site_digest()

    @property
    def nodes(self) -> list[str]:
        return [facts.node_name(k) for k in range(1, self.shape.nodes + 1)]

    @property
    def services(self) -> list[str]:
        return [*facts.CONTROLLER_TIER, facts.REST_SERVICE, *self.nodes]

    def image_of(self, service: str) -> str:
        return self.slurm_image if service in facts.SLURM_IMAGE_SERVICES else self.image

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
        offer = (self.site.cpus_per_gpu, self.site.memory_per_gpu_mb)
        return self.cluster.compose_env(
            self.shape, self.slurm_image, self.image, offer, self.rest_port, override
        )

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
