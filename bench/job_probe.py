"""Job latencies timed from *inside* the cluster, on the login node (run by bench.cluster_latency).

    python -m bench.job_probe running                 # sbatch -> RUNNING, every node
    python -m bench.job_probe training CONFIG [k=v]   # submit -> every rank training, by phase
    python -m bench.job_probe imports                 # python + torch imports on every node
    python -m bench.job_probe requeue                 # scontrol requeue -> RUNNING again
    python -m bench.job_probe preempt CONFIG          # an urgent job preempting a training run

Each prints one JSON object. Timing here, not from the host, keeps ``docker compose exec``'s own
start-up (~0.5-1 s per poll with Compose v1) out of the figures. This module owns those probes.

A training phase ends when the probe sees its mark. The trainer's ``metrics.jsonl`` marks the
last two: its ``start`` record (data, model, optimizer and DDP built) and its first ``train``
record (with ``log_every=1``, written after the first DDP step, whose loss all ranks reduced).
The first two happen before the trainer opens metrics.jsonl, so they are read off the job's
log: the batch script's first line and the trainer's ``Backend:`` line (every rank has imported
torch and joined the rendezvous).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import load_config, resolve_paths
from trainer.metrics import read_metrics

POLL_S = 0.02
# phase -> the job log's text that ends it (these come before the trainer opens metrics.jsonl)
LOG_PHASES = {"queue_s": "(restart ", "imports_rendezvous_s": "Backend: "}
# phase -> the kind of the first metrics.jsonl record that ends it
METRICS_PHASES = {"setup_s": "start", "first_step_s": "train"}
PHASES = [*LOG_PHASES, *METRICS_PHASES]  # in order


def phases_seen(log_text: str, records: list[dict[str, Any]]) -> set[str]:
    """The phases whose end shows in the job's log text or its metrics.jsonl records."""
    kinds = {r.get("kind") for r in records}
    return {p for p, text in LOG_PHASES.items() if text in log_text} | {
        p for p, kind in METRICS_PHASES.items() if kind in kinds
    }


def metrics_path(config: str, overrides: list[str], job: str) -> Path:
    """Where the job's trainer writes metrics.jsonl: its output_dir, resolved by the trainer's
    own rule in the job's environment (sbatch passes ours on, plus SLURM_JOB_ID)."""
    env = {**os.environ, "SLURM_JOB_ID": job}
    return Path(resolve_paths(load_config(config, overrides, env), env).output_dir, "metrics.jsonl")


def node_count() -> int:
    """The cluster's size, from Slurm (slurm.conf defines it once)."""
    return len(set(sh("sinfo", "-h", "-N", "-o", "%N").split()))  # sinfo: once per partition


def sh(*cmd: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip()


def queued(job: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True
    ).stdout.strip()


def wait(predicate: Callable[[], bool], timeout: float = 600) -> float:
    """Seconds until predicate() is true (polled every POLL_S)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(POLL_S)
    return time.monotonic() - start


def wait_idle() -> None:
    """Start each measurement on an empty queue with every node idle (not still COMPLETING the
    previous job), so that it times this job and nothing left over."""
    wait(lambda: not sh("squeue", "-h") and set(sh("sinfo", "-h", "-o", "%t").split()) == {"idle"})


def sbatch_to_running() -> dict[str, float]:
    wait_idle()
    start = time.monotonic()
    nodes = f"--nodes={node_count()}"
    job = sh("sbatch", "--parsable", nodes, "-o", "/dev/null", "--wrap", "srun sleep 2")
    wait(lambda: queued(job) in {"RUNNING", "COMPLETING", ""})
    elapsed = time.monotonic() - start
    wait(lambda: queued(job) == "")
    return {"sbatch_running_s": elapsed}


def submit_training(config: str, overrides: list[str], *sbatch_args: str) -> tuple[str, Path, Path]:
    """Submit jobs/train_ddp.sbatch: its id, its log and its metrics.jsonl (not there yet)."""
    log_dir = Path(os.environ["SLURMLAB_SHARED"], "logs")
    job = sh(
        "sbatch",
        "--parsable",
        *sbatch_args,
        "-o",
        str(log_dir / "bench-%j.out"),
        "jobs/train_ddp.sbatch",
        *overrides,
        env={**os.environ, "CONFIG": config},
    ).split(";")[0]
    return job, log_dir / f"bench-{job}.out", metrics_path(config, overrides, job)


def submit_to_training(config: str, overrides: list[str]) -> dict[str, float]:
    overrides = [*overrides, "log_every=1"]  # the first train record follows the first step
    wait_idle()
    start = time.monotonic()
    job, log, metrics = submit_training(config, overrides)
    ends: dict[str, float] = {}
    while len(ends) < len(PHASES):
        text = log.read_text(errors="replace") if log.exists() else ""
        records = read_metrics(metrics) if metrics.exists() else []
        now = time.monotonic() - start
        for phase in phases_seen(text, records):
            ends.setdefault(phase, now)
        if now > 600:
            raise TimeoutError(f"job {job}: phases seen {sorted(ends)}; log:\n{text[-2000:]}")
        time.sleep(POLL_S)
    result = {"job": float(job), "submit_to_training_s": ends["first_step_s"]}
    previous = 0.0
    for phase in PHASES:  # durations, not end times
        result[phase], previous = ends[phase] - previous, ends[phase]
    wait(lambda: queued(job) == "")
    result["end_to_sacct_s"] = wait(
        lambda: sh("sacct", "-X", "-n", "-P", "-j", job, "-o", "State") == "COMPLETED"
    )
    return result


IMPORTS = (
    "import time; t = time.monotonic(); import torch; t1 = time.monotonic(); "
    "import torch._dynamo; print(t1 - t, time.monotonic() - t1)"
)


def concurrent_imports() -> dict[str, float]:
    """What every rank pays before it can train: import torch, then torch._dynamo (which torch
    imports on the first optimizer it builds), on every node at once, as a job does."""
    wait_idle()
    start = time.monotonic()
    lines = sh("srun", f"--nodes={node_count()}", "python", "-c", IMPORTS).splitlines()
    wall = time.monotonic() - start
    torch_s = [float(line.split()[0]) for line in lines]
    dynamo_s = [float(line.split()[1]) for line in lines]
    return {
        "imports_wall_s": wall,
        "import_torch_s": max(torch_s),
        "import_torch_dynamo_s": max(dynamo_s),
    }


def requeue_to_running() -> dict[str, float]:
    """A requeued job (what preemption and node loss do too) until it runs again: Slurm holds it
    for cred_expire + 1 s (AuthInfo in slurm.conf), then schedules it."""
    wait_idle()
    job = sh("sbatch", "--parsable", "-N1", "-o", "/dev/null", "--wrap", "sleep 600")
    wait(lambda: queued(job) == "RUNNING")
    start = time.monotonic()
    sh("scontrol", "requeue", job)
    wait(lambda: queued(job) != "RUNNING")
    wait(lambda: queued(job) == "RUNNING")
    elapsed = time.monotonic() - start
    sh("scancel", job)
    return {"requeue_running_s": elapsed}


def preemption(config: str) -> dict[str, float]:
    """A job in the `urgent` partition preempting a training run on every node: until the
    victim has checkpointed (the trainer logs the signal after its save), until the urgent job
    runs, and from the urgent job's end until the requeued victim runs again."""
    wait_idle()
    victim, log, metrics = submit_training(
        config, ["epochs=50", "log_every=1"], f"--nodes={node_count()}"
    )
    wait(lambda: metrics.exists() and any(r.get("kind") == "train" for r in read_metrics(metrics)))
    start = time.monotonic()
    urgent = sh(
        *("sbatch", "--parsable", "-p", "urgent", "-N1", "--gpus-per-node=1"),
        *("-o", "/dev/null", "--wrap", "sleep 1"),
    )
    wait(lambda: "Preemption signal received" in log.read_text(errors="replace"))
    checkpointed = time.monotonic() - start
    wait(lambda: queued(urgent) in {"RUNNING", "COMPLETING", ""})
    urgent_running = time.monotonic() - start
    wait(lambda: queued(urgent) == "")
    done = time.monotonic()
    wait(lambda: queued(victim) == "RUNNING")
    victim_running = time.monotonic() - done
    sh("scancel", victim)
    wait(lambda: queued(victim) == "")
    return {
        "preempt_checkpointed_s": checkpointed,
        "preempt_urgent_running_s": urgent_running,
        "preempt_victim_running_s": victim_running,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("running")
    training = sub.add_parser("training")
    training.add_argument("config")
    training.add_argument("overrides", nargs="*")
    sub.add_parser("imports")
    sub.add_parser("requeue")
    sub.add_parser("preempt").add_argument("config")
    args = parser.parse_args()
    if args.what == "running":
        result = sbatch_to_running()
    elif args.what == "training":
        result = submit_to_training(args.config, args.overrides)
    elif args.what == "requeue":
        result = requeue_to_running()
    elif args.what == "preempt":
        result = preemption(args.config)
    else:
        result = concurrent_imports()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
