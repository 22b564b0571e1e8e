"""Cluster latencies, measured on a throwaway cluster (Compose project ``slurmlab-bench``).

    python -m bench.cluster_latency [--repeats 3]        (from the host: make bench-cluster)

Measures, in one run: ``make up`` from clean volumes to every node idle (images already built),
and its growth with the node count (``make up NODES=N``, N = 1, 4, 8, 16), the memory an idle
node takes, ``make scale`` up and down, ``make up`` after ``make down`` (state kept),
sbatch -> RUNNING, submit -> every rank inside the training loop (split into phases), job end ->
COMPLETED in sacct, and the imports every rank pays
before it trains; the job figures are timed on the login node by bench/job_probe.py. And for a
project of one's own (tests/example_project, copied to a temporary folder), `slurmlab up` with a
requirements file never installed before, with its dependencies already built, and again on the
running cluster. Reports the image size too. The cold image build time is printed by
``make image`` itself (``== image ... ready (N s)``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = "slurmlab-bench"
CONFIG = "jobs/configs/simple_cnn_synthetic.yaml"
TARGETS = {"up_ready_s": 20.0, "submit_to_training_s": 15.0, "requeue_running_s": 15.0}


def sh(cmd: list[str], timeout: float = 600, check: bool = True) -> str:
    # Compose derives per-project paths (the shared directory) from the project name.
    env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def compose() -> list[str]:
    ok = subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    return ["docker", "compose"] if ok else ["docker-compose"]


def make(target: str, *settings: str) -> None:
    sh(["make", target, *settings, f"COMPOSE_PROJECT_NAME={PROJECT}"], timeout=1800)


def clean() -> None:
    make("clean")


def login(script: str, check: bool = True) -> str:
    """stdout of a script on the login node as the job user (check=False: "" on failure)."""
    return sh(
        [
            *compose(),
            "-p",
            PROJECT,
            "exec",
            "-T",
            "-u",
            "slurmlab",
            "slurmctld",
            "bash",
            "-lc",  # the login shell `make shell` gives
            f"cd /workspace && {script}",
        ],
        check=check,
    )


def probe(*args: str) -> dict[str, float]:
    """Run bench/job_probe.py on the login node: it times jobs from inside the cluster."""
    command = shlex.join(["python", "-m", "bench.job_probe", *args])
    out: dict[str, float] = json.loads(login(command))
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def submit_to_training() -> dict[str, float]:
    overrides = ["epochs=1", "max_steps_per_epoch=3", "log_every=1", "plot=false"]
    return probe("training", CONFIG, *overrides)


def image_size_gb() -> float:
    env = dict(
        line.split("=", 1)
        for line in (REPO / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    size = sh(["docker", "image", "inspect", "-f", "{{.Size}}", env["SLURMLAB_IMAGE"]])
    return int(size) / 1e9


ROWS = {  # key -> label, in print order; indented rows break down the row above them
    "up_ready_s": "make up -> all nodes idle (clean)",
    "up_1_s": "  NODES=1",
    "up_8_s": "  NODES=8",
    "up_16_s": "  NODES=16",
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
    "project_up_new_deps_s": "slurmlab up, project, new deps",
    "project_up_cached_s": "  deps built before (clean volumes)",
    "project_up_again_s": "  on the running cluster (no change)",
    "imports_wall_s": "import torch+_dynamo, all nodes",
    "import_torch_s": "  import torch (slowest rank)",
    "import_torch_dynamo_s": "  import torch._dynamo (slowest)",
}


def node_memory_mib() -> list[float]:
    """Memory in use by each node container of the bench cluster (docker stats)."""
    ids = [
        line.split()[0]
        for line in sh(
            ["docker", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}",
             "--format", '{{.ID}} {{.Label "com.docker.compose.service"}}'],
        ).splitlines()
        if line.split()[1].startswith("node")
    ]  # fmt: skip
    stats = sh(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", *ids])
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    used = [line.split("/")[0].strip() for line in stats.splitlines()]
    return [float(u[:-3]) * units[u[-3:]] for u in used]


def growth_curve() -> dict[str, float]:
    """make up from clean volumes for 1, 8 and 16 nodes (4 is the default, timed apart), the
    memory of an idle node, and make scale both ways."""
    out: dict[str, float] = {}
    for nodes in (1, 8, 16):
        clean()
        out[f"up_{nodes}_s"] = timed(lambda n=nodes: make("up", f"NODES={n}"))
    time.sleep(5)  # let the 16 nodes settle before reading their memory
    out["node_idle_mib"] = statistics.median(node_memory_mib())
    clean()
    make("up", "NODES=4")
    out["scale_up_s"] = timed(lambda: make("scale", "NODES=8"))
    out["scale_down_s"] = timed(lambda: make("scale", "NODES=4"))
    return out


def project_up() -> dict[str, float]:
    """`slurmlab up` for tests/example_project (2 nodes, one PyPI dependency) from its own
    folder: first with a requirements file no image was built for (a unique comment line), then
    from clean volumes with that layer built, then once more on the running cluster."""
    cli = ["python3", "-m", "slurmlab"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="slurmlab-bench-project-") as tmp:
        folder = Path(tmp) / "example_project"
        shutil.copytree(REPO / "tests" / "example_project", folder)
        requirements = folder / "requirements.txt"
        requirements.write_text(f"{requirements.read_text()}# bench run {uuid.uuid4().hex}\n")

        def slurmlab(*args: str) -> str:
            proc = subprocess.run([*cli, *args], cwd=folder, env=env, capture_output=True,
                                  text=True, timeout=1800)  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"slurmlab {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}")
            return proc.stdout

        out: dict[str, float] = {}
        try:
            out["project_up_new_deps_s"] = timed(lambda: slurmlab("up"))
            image = slurmlab("env").split("SLURMLAB_IMAGE=")[1].split()[0]
            slurmlab("clean")
            out["project_up_cached_s"] = timed(lambda: slurmlab("up"))
            out["project_up_again_s"] = timed(lambda: slurmlab("up"))
            slurmlab("clean")
            sh(["docker", "rmi", image])  # built for this run only
        except BaseException:
            subprocess.run([*cli, "clean"], cwd=folder, env=env, capture_output=True)
            raise
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    make("image")
    clean()
    results: dict[str, list[float]] = {k: [] for k in ROWS}

    def add(measured: dict[str, float]) -> None:
        for key, value in measured.items():
            if key in results:
                results[key].append(value)

    try:
        add({"up_ready_s": timed(lambda: make("up"))})
        login('mkdir -p "$SLURMLAB_SHARED/logs"')
        submit_to_training()  # warm-up: generates the synthetic data set once
        for _ in range(args.repeats):
            add(probe("running"))
            add(submit_to_training())
            add(probe("imports"))
            add(probe("requeue"))
            add(probe("preempt", CONFIG))
        make("down")
        add({"restart_ready_s": timed(lambda: make("up"))})
        for _ in range(args.repeats):
            add(growth_curve())
        clean()
        for _ in range(args.repeats):
            add(project_up())
    finally:
        clean()

    print(f"{'cluster latency':<36} {'median':>8} {'min':>8} {'max':>8}   target")
    for key, label in ROWS.items():
        values = results[key]
        unit = "M" if key.endswith("_mib") else "s"
        target = TARGETS.get(key)
        verdict = (
            ""
            if target is None
            else ("PASS" if statistics.median(values) <= target else "MISS") + f" (<= {target:g} s)"
        )
        print(
            f"{label:<36} {statistics.median(values):>7.1f}{unit} {min(values):>7.1f}{unit} "
            f"{max(values):>7.1f}{unit}   {verdict}"
        )
    size = image_size_gb()
    print(f"{'image size':<36} {size:>7.2f} GB")
    if args.json:
        args.json.write_text(json.dumps({**results, "image_size_gb": size}, indent=2))
    misses = [k for k, t in TARGETS.items() if statistics.median(results[k]) > t]
    for key in misses:
        print(f"MISS {key}: see README.md#performance for the profile of where the time goes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
