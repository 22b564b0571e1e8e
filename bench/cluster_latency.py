"""Cluster latencies, measured on a throwaway cluster (Compose project ``slurmlab-bench``).

    python -m bench.cluster_latency [--repeats 3]        (from the host: make bench-cluster)

Measures, in one run: ``make up`` from clean volumes to 4 idle GPU nodes (images already built),
``make up`` after ``make down`` (state kept), sbatch -> RUNNING, submit -> every rank inside the
training loop, job end -> COMPLETED in sacct; and reports the image size. The cold image build
time is printed by ``make image`` itself (``== image ... ready (N s)``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = "slurmlab-bench"
CONFIG = "jobs/configs/simple_cnn_synthetic.yaml"
TARGETS = {"up_ready_s": 20.0, "submit_to_training_s": 15.0}


def sh(cmd: list[str], timeout: float = 600, check: bool = True) -> str:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def compose() -> list[str]:
    ok = subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    return ["docker", "compose"] if ok else ["docker-compose"]


def make(target: str) -> None:
    sh(["make", target, f"COMPOSE_PROJECT_NAME={PROJECT}"], timeout=1800)


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
            "-c",
            f"cd /workspace && {script}",
        ],
        check=check,
    )


def poll(predicate: Callable[[], bool], timeout: float = 600, every: float = 0.2) -> float:
    """Seconds until predicate() is true."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(every)
    return time.monotonic() - start


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def job_state(job: str) -> str:
    return login(f"squeue -h -j {job} -o %T", check=False).strip()


def sbatch_to_running() -> float:
    start = time.monotonic()
    job = login("sbatch --parsable -N4 -o /dev/null --wrap 'srun sleep 2'").strip()
    poll(lambda: job_state(job) in {"RUNNING", "COMPLETING", ""})
    elapsed = time.monotonic() - start
    poll(lambda: job_state(job) == "")
    return elapsed


def submit_to_training() -> tuple[float, float]:
    """(submit -> first step done by every rank, job gone from queue -> sacct COMPLETED)."""
    args = "epochs=1 max_steps_per_epoch=3 log_every=1 plot=false"
    start = time.monotonic()
    job = login(
        f"CONFIG={CONFIG} sbatch --parsable -o /shared/logs/bench-%j.out "
        f"jobs/train_ddp.sbatch {args}"
    ).strip()
    # DDP's first step is a collective: rank 0 logs batch 1 only once all ranks have joined.
    poll(lambda: "Batch: 1," in login(f"cat /shared/logs/bench-{job}.out", check=False))
    to_training = time.monotonic() - start
    poll(lambda: job_state(job) == "")
    to_sacct = poll(
        lambda: login(f"sacct -X -n -P -j {job} -o State").strip() == "COMPLETED", every=0.1
    )
    return to_training, to_sacct


def image_size_gb() -> float:
    env = dict(
        line.split("=", 1)
        for line in (REPO / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    size = sh(["docker", "image", "inspect", "-f", "{{.Size}}", env["SLURMLAB_IMAGE"]])
    return int(size) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    make("image")
    sh(["make", "clean", f"COMPOSE_PROJECT_NAME={PROJECT}"])
    results: dict[str, list[float]] = {
        k: []
        for k in [
            "up_ready_s",
            "restart_ready_s",
            "sbatch_running_s",
            "submit_to_training_s",
            "end_to_sacct_s",
        ]
    }
    try:
        results["up_ready_s"].append(timed(lambda: make("up")))
        login("mkdir -p /shared/logs")
        submit_to_training()  # warm-up: generates the synthetic data set once
        for _ in range(args.repeats):
            results["sbatch_running_s"].append(sbatch_to_running())
            training, sacct = submit_to_training()
            results["submit_to_training_s"].append(training)
            results["end_to_sacct_s"].append(sacct)
        make("down")
        results["restart_ready_s"].append(timed(lambda: make("up")))
    finally:
        sh(["make", "clean", f"COMPOSE_PROJECT_NAME={PROJECT}"])

    print(f"{'cluster latency':<34} {'median':>8} {'min':>8} {'max':>8}   target")
    for key, values in results.items():
        target = TARGETS.get(key)
        verdict = (
            ""
            if target is None
            else ("PASS" if statistics.median(values) <= target else "MISS") + f" (<= {target:g} s)"
        )
        print(
            f"{key:<34} {statistics.median(values):>7.1f}s {min(values):>7.1f}s "
            f"{max(values):>7.1f}s   {verdict}"
        )
    size = image_size_gb()
    print(f"{'image size':<34} {size:>7.2f} GB")
    if args.json:
        args.json.write_text(json.dumps({**results, "image_size_gb": size}, indent=2))
    misses = [k for k, t in TARGETS.items() if statistics.median(results[k]) > t]
    for key in misses:
        print(f"MISS {key}: see README.md#performance for the profile of where the time goes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
