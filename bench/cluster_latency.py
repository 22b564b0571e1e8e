"""``make bench-cluster``: latencies of a throwaway cluster (Compose project slurmlab-bench),
driven the user's way: make up / scale / down / clean, the slurmlab CLI for a project of one's
own, jobs on the login node as the job user (timed there by bench/job_probe.py), and a
submission storm over the REST API and sbatch together (bench/rest_storm.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.job_probe import REPO, sh
from bench.rest_storm import CONTROLLER_RSS_KIB, Storm, report, rss_mib
from jobs.rest_submit import Client

PROJECT, ENV = "slurmlab-bench", {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's CLI
CONFIG = "jobs/configs/simple_cnn_synthetic.yaml"
TRAINING = ["training", CONFIG, "epochs=1", "max_steps_per_epoch=3", "plot=false"]
STORM_JOBS, STORM_CLIENTS = 200, 8  # half over REST, half through sbatch; clients of each
TARGETS = {"up_ready_s": 20.0, "submit_to_training_s": 15.0, "requeue_running_s": 15.0}
ROWS = {  # key -> label, in print order; indented rows break down the row above them
    "up_ready_s": "make up -> all nodes idle (clean)",
    **{f"up_{n}_s": f"  NODES={n}" for n in (1, 8, 16)},
    "up_again_s": "make up on the running cluster",
    "site_start_s": "  of which the site (sacctmgr)",
    "site_live_s": "make up SITE=changed, running",
    "site_back_s": "make up SITE=default, running",
    "node_rejoin_s": "a node restarted -> make up ready",
    "node_idle_mib": "memory of an idle node (MiB, N=16)",
    "scale_up_s": "make scale NODES=4 -> 8, ready",
    "scale_down_s": "make scale NODES=8 -> 4, ready",
    "restart_ready_s": "make up after make down",
    "sbatch_running_s": "sbatch -> RUNNING (all nodes)",
    "submit_to_training_s": "submit -> all ranks training",
    "queue_s": "  queue + batch script start",
    "imports_rendezvous_s": "  python/torch import, rendezvous",
    "setup_s": "  data, model, optimizer, DDP",
    "first_step_s": "  first DDP step",
    "end_to_sacct_s": "job end -> COMPLETED in sacct",
    "requeue_running_s": "scontrol requeue -> RUNNING again",
    "preempt_checkpointed_s": "urgent job -> victim checkpointed",
    "preempt_urgent_running_s": "urgent job -> urgent RUNNING",
    "preempt_victim_running_s": "urgent done -> victim RUNNING",
    "oom_overshoot_100_mib": "--mem=256M, 100 MiB/s: overshoot (MiB)",
    "oom_kill_after_100_s": "  killed after crossing it",
    "oom_overshoot_400_mib": "--mem=256M, 400 MiB/s: overshoot (MiB)",
    "oom_kill_after_400_s": "  killed after crossing it",
    "project_up_cold_s": "slurmlab up, project, nothing built",
    "project_up_new_deps_s": "  new deps (Slurm image built)",
    "project_up_cached_s": "  deps built before (clean volumes)",
    "project_up_again_s": "  on the running cluster (no change)",
    "storm_rest_jobs_per_s": f"{STORM_JOBS}-job storm: REST submits/s",
    "storm_sbatch_jobs_per_s": "  sbatch submits/s (login shells)",
    "storm_drain_s": "  first submit -> every job done",
    "storm_records_s": "  first submit -> every sacct record",
    "storm_ctld_rss_before_mib": "  slurmctld memory before (MiB)",
    "storm_ctld_rss_peak_mib": "  slurmctld memory, peak (MiB)",
    "imports_wall_s": "import torch+_dynamo, all nodes",
    "import_torch_s": "  import torch (slowest rank)",
    "import_torch_dynamo_s": "  import torch._dynamo (slowest)",
}


def timed(*cmd: str, cwd: Path = REPO, env: dict[str, str] = ENV) -> float:
    return timed_output(*cmd, cwd=cwd, env=env)[0]


def timed_output(*cmd: str, cwd: Path = REPO, env: dict[str, str] = ENV) -> tuple[float, str]:
    start = time.monotonic()
    out = sh(*cmd, cwd=cwd, env=env, timeout=1800)
    return time.monotonic() - start, out


def make(target: str, *settings: str) -> float:
    return timed("make", target, *settings, f"COMPOSE_PROJECT_NAME={PROJECT}")


def site_changes(folder: Path) -> dict[str, float]:
    """The default site with a QOS, a partition of 2 nodes and a user more, applied to the
    running cluster and taken back (sacctmgr, the new user on every container, reconfigure)."""
    from slurmlab import site as site_mod

    data = site_mod.yaml_load(site_mod.default_site_path().read_text())
    data["qos"]["long"] = {"priority": 5, "max_wall": "2-00:00:00"}
    data["partitions"]["cpu"] = {"nodes": 2, "max_time": "01:00:00"}
    data["users"]["bob"] = {"default_account": "research"}
    changed = folder / "site.yaml"
    changed.write_text(json.dumps(data))  # JSON is YAML
    return {"site_live_s": make("up", f"SITE={changed}"), "site_back_s": make("up", "SITE=default")}


def up_clean() -> dict[str, float]:
    """make up from nothing, and the share of it the site's accounting took (it says)."""
    took, out = timed_output("make", "up", f"COMPOSE_PROJECT_NAME={PROJECT}")
    site = re.search(r"accounting change\(s\), ([0-9.]+) s\)", out)
    return {"up_ready_s": took} | ({"site_start_s": float(site.group(1))} if site else {})


def slurmlab(*args: str, cwd: Path = REPO, env: dict[str, str] = ENV) -> str:  # on cwd's project
    return sh("python3", "-m", "slurmlab", *args, env=env, cwd=cwd, timeout=1800)


def images_of(cwd: Path, env: dict[str, str] = ENV) -> dict[str, str]:  # variable -> image
    lines = slurmlab("env", cwd=cwd, env=env).replace("export ", "").splitlines()
    return dict(line.split("=", 1) for line in lines if "_IMAGE=" in line)


def probe(*args: str) -> dict[str, float]:
    """bench/job_probe.py on the login node, as the job user."""
    command = ["exec", "--name", PROJECT, "--", "python", "-m", "bench.job_probe", *args]
    return json.loads(slurmlab(*command))


def storm() -> dict[str, float]:
    """STORM_JOBS jobs at once, over the REST API (a token from make token) and through sbatch
    in login shells (slurmlab exec), STORM_CLIENTS concurrent clients of each; every job must end
    COMPLETED with its record in sacct."""
    lines = sh("make", "-s", "token", f"COMPOSE_PROJECT_NAME={PROJECT}", env=ENV).splitlines()
    token = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    client = Client(token["SLURMLAB_REST"], token["SLURM_JWT"])
    controller = sh("docker", "ps", "-qf", f"name={PROJECT}.slurmctld").strip()

    def rss() -> float:
        try:
            return rss_mib(sh("docker", "exec", controller, "bash", "-c", CONTROLLER_RSS_KIB))
        except RuntimeError as err:  # the container is away
            raise ValueError(str(err)) from err

    def login(script: str) -> str:
        return slurmlab("exec", "--name", PROJECT, "--", "bash", "-c", script)

    result = Storm(client, login, rss).run(STORM_JOBS, STORM_CLIENTS, timeout_s=900)
    lost = [job for job, state in result.final.items() if state != "COMPLETED"]
    if lost or result.queued_names != STORM_JOBS:
        raise RuntimeError(f"storm: {result.queued_names} jobs accounted, not COMPLETED: {lost}")
    return report(result)


def growth_curve() -> dict[str, float]:
    """make up from clean for 1, 8, 16 nodes (4 is up_ready_s), idle memory, scale both ways."""
    out: dict[str, float] = {}
    for nodes in (1, 8, 16):
        make("clean")
        out[f"up_{nodes}_s"] = make("up", f"NODES={nodes}")
    time.sleep(5)  # let the 16 nodes settle before reading their memory
    nodes = sh("docker", "ps", "-qf", f"name={PROJECT}.node").split()  # Compose v1 _, v2 -
    stats = sh("docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", *nodes)
    mib = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    used = [line.split("/")[0].strip() for line in stats.splitlines()]
    out["node_idle_mib"] = statistics.median(float(u[:-3]) * mib[u[-3:]] for u in used)
    make("clean")
    make("up", "NODES=4")
    out["up_again_s"] = make("up")
    node2 = sh("docker", "ps", "-qf", f"name={PROJECT}.node2.")
    out["node_rejoin_s"] = timed("docker", "restart", "-t", "2", node2) + make("up")
    return out | {"scale_up_s": make("scale", "NODES=8"), "scale_down_s": make("scale", "NODES=4")}


def project_up() -> dict[str, float]:
    """slurmlab up, tests/example_project: cold (another JOB_UID), new deps, built, unchanged."""
    with tempfile.TemporaryDirectory(prefix="slurmlab-bench-project-") as tmp:
        folder = Path(tmp) / "example_project"
        shutil.copytree(REPO / "tests" / "example_project", folder)
        requirements = folder / "requirements.txt"
        requirements.write_text(f"{requirements.read_text()}# bench run {uuid.uuid4().hex}\n")
        up, cold = ("python3", "-m", "slurmlab", "up"), {**ENV, "JOB_UID": str(os.getpid() + 9999)}
        try:
            out = {"project_up_cold_s": timed(*up, cwd=folder, env=cold)}
            built = [*images_of(folder, cold).values()]
            slurmlab("clean", cwd=folder, env=cold)
            out["project_up_new_deps_s"] = timed(*up, cwd=folder)
            built.append(images_of(folder)["SLURMLAB_IMAGE"])
            slurmlab("clean", cwd=folder)
            out["project_up_cached_s"] = timed(*up, cwd=folder)
            out["project_up_again_s"] = timed(*up, cwd=folder)
        finally:
            with contextlib.suppress(RuntimeError):
                slurmlab("clean", cwd=folder)
        sh("docker", "rmi", *built)  # built for this run only
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    make("image")
    make("clean")
    measured: list[dict[str, float]] = []
    try:
        measured.append(up_clean())
        probe(*TRAINING)  # warm-up: generates the synthetic data set once
        for _ in range(args.repeats):
            for what in ("running",), TRAINING, ("imports",), ("requeue",), ("preempt", CONFIG):
                measured.append(probe(*what))
            measured.append(probe("memory", "100", "400"))
            with tempfile.TemporaryDirectory(prefix="slurmlab-bench-site-") as folder:
                measured.append(site_changes(Path(folder)))
            measured.append(storm())
        make("down")
        measured.append({"restart_ready_s": make("up")})
        make("clean")
        measured.append(up_clean())
        measured += [growth_curve() for _ in range(args.repeats)]
        make("clean")
        measured += [project_up() for _ in range(args.repeats)]
    finally:
        make("clean")
    results = {key: [m[key] for m in measured if key in m] for key in ROWS}
    print(f"{'cluster latency':<36} {'median':>8} {'min':>8} {'max':>8}   target")
    for key, label in ROWS.items():
        values, target = results[key], TARGETS.get(key)
        unit = "M" if key.endswith("_mib") else " " if key.endswith("_per_s") else "s"
        if not values:
            print(f"{label:<36} {'(not measured)':>8}")
            continue
        median = statistics.median(values)
        figures = " ".join(f"{v:>7.1f}{unit}" for v in (median, min(values), max(values)))
        verdict = f"{'PASS' if median <= target else 'MISS'} (<= {target:g} s)" if target else ""
        print(f"{label:<36} {figures}   {verdict}")
    for image in sorted(images_of(REPO, {**ENV, "COMPOSE_PROJECT_NAME": PROJECT}).values()):
        size = int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image)) / 1e9
        print(f"{'image ' + image.split(':')[0]:<36} {size:>7.2f} GB")
    for key in (k for k, t in TARGETS.items() if statistics.median(results[k]) > t):
        print(f"MISS {key}: see README.md#performance for the profile of where the time goes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
