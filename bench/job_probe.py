"""Job latencies timed on the login node, out of reach of ``docker compose exec``'s start-up:
``python -m bench.job_probe PROBE [ARGS]`` prints one JSON object. bench/cluster_latency.py runs
it and shares its helpers (standard library only, so they run on the host too)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.02
# A training phase ends when its mark shows: the batch script's first line in the job's log, the
# trainer's "Backend:" line (every rank imported torch, joined the rendezvous), its metrics.jsonl
# start record (data, model, optimizer, DDP built), its first train record (the first DDP step).
LOG_PHASES = {"queue_s": "(restart ", "imports_rendezvous_s": "Backend: "}
METRICS_PHASES = {"setup_s": "start", "first_step_s": "train"}
PHASES = [*LOG_PHASES, *METRICS_PHASES]  # in order
GONE = ("COMPLETING", "")  # squeue: finishing, or out of the queue
Records = Callable[[], list[dict[str, Any]]]


def sh(*cmd: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 600) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout.strip()


def wait(predicate: Callable[[], bool], timeout: float = 600) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(POLL_S)
    return time.monotonic() - start


def until(job: str, *states: str, leave: bool = False) -> float:
    """Seconds until the job's squeue state is (``leave``: is not) one of ``states``."""
    squeue = functools.partial(subprocess.run, ["squeue", "-h", "-j", job, "-o", "%T"], text=True)
    return wait(lambda: (squeue(capture_output=True).stdout.strip() in states) != leave)


def wrap(command: str, *sbatch: str) -> str:  # a job running ``command``, submitted: its id
    return sh("sbatch", "--parsable", *sbatch, "-o", "/dev/null", "--wrap", command)


def all_nodes() -> str:  # sinfo lists a node once per partition
    return f"--nodes={len(set(sh('sinfo', '-h', '-N', '-o', '%N').split()))}"


def phases_seen(log_text: str, records: list[dict[str, Any]]) -> set[str]:
    kinds = {r.get("kind") for r in records}
    seen = {phase for phase, text in LOG_PHASES.items() if text in log_text}
    return seen | {phase for phase, kind in METRICS_PHASES.items() if kind in kinds}


def metrics_path(config: str, overrides: list[str], job: str) -> Path:
    """The job's metrics.jsonl, by the trainer's output_dir rule in the job's environment."""
    from trainer.config import load_config, resolve_paths

    env = {**os.environ, "SLURM_JOB_ID": job}
    return Path(resolve_paths(load_config(config, overrides, env), env).output_dir, "metrics.jsonl")


def submit(config: str, overrides: list[str], *sbatch: str) -> tuple[str, Path, Records]:
    """jobs/train_ddp.sbatch, submitted: its id, its log, and its metrics.jsonl's records."""
    from trainer.metrics import read_metrics

    logs = Path(os.environ["SLURMLAB_SHARED"], "logs")
    logs.mkdir(parents=True, exist_ok=True)
    args = [*sbatch, "-o", str(logs / "bench-%j.out"), "jobs/train_ddp.sbatch", *overrides]
    job = sh("sbatch", "--parsable", *args, env={**os.environ, "CONFIG": config}).split(";")[0]
    metrics = metrics_path(config, overrides, job)
    return job, logs / f"bench-{job}.out", lambda: read_metrics(metrics) if metrics.exists() else []


def running() -> dict[str, float]:
    """sbatch -> RUNNING on every node."""
    start = time.monotonic()
    until(job := wrap("srun sleep 2", all_nodes()), "RUNNING", *GONE)
    elapsed = time.monotonic() - start
    until(job, "")
    return {"sbatch_running_s": elapsed}


def training(config: str, *overrides: str) -> dict[str, float]:
    """submit -> every rank training, by phase; then job end -> COMPLETED in sacct."""
    start, ends = time.monotonic(), {}
    job, log, records = submit(config, [*overrides, "log_every=1"])
    while len(ends) < len(PHASES):
        text, now = log.read_text(errors="replace") if log.exists() else "", time.monotonic()
        for phase in phases_seen(text, records()):
            ends.setdefault(phase, now - start)
        if now - start > 600:
            raise TimeoutError(f"job {job}: phases seen {sorted(ends)}; log:\n{text[-2000:]}")
        time.sleep(POLL_S)
    result, previous = {"submit_to_training_s": ends["first_step_s"]}, 0.0
    for phase in PHASES:  # durations, not end times
        result[phase], previous = ends[phase] - previous, ends[phase]
    until(job, "")
    sacct = ("sacct", "-X", "-n", "-P", "-j", job, "-o", "State")
    return result | {"end_to_sacct_s": wait(lambda: sh(*sacct) == "COMPLETED")}


def imports() -> dict[str, float]:
    """import torch, then torch._dynamo (the first optimizer imports it), on every node at once."""
    code = "import time; t = time.monotonic(); import torch; t1 = time.monotonic(); "
    code += "import torch._dynamo; print(t1 - t, time.monotonic() - t1)"
    start = time.monotonic()
    lines = sh("srun", all_nodes(), "python", "-c", code).splitlines()
    wall, ranks = time.monotonic() - start, [[float(x) for x in line.split()] for line in lines]
    torch_s, dynamo_s = (max(column) for column in zip(*ranks, strict=True))
    return {"imports_wall_s": wall, "import_torch_s": torch_s, "import_torch_dynamo_s": dynamo_s}


def requeue() -> dict[str, float]:
    """scontrol requeue -> RUNNING again: Slurm holds a requeued job for cred_expire + 1 s."""
    until(job := wrap("sleep 600", "-N1"), "RUNNING")
    start = time.monotonic()
    sh("scontrol", "requeue", job)
    until(job, "RUNNING", leave=True)
    until(job, "RUNNING")
    elapsed = time.monotonic() - start
    sh("scancel", job)
    return {"requeue_running_s": elapsed}


def preempt(config: str) -> dict[str, float]:
    """An urgent job preempting an all-node training run: checkpointed, urgent running, back."""
    victim, log, records = submit(config, ["epochs=50", "log_every=1"], all_nodes())
    wait(lambda: any(r.get("kind") == "train" for r in records()))
    start = time.monotonic()
    urgent = wrap("sleep 1", "-p", "urgent", "-N1", "--gpus-per-node=1")
    wait(lambda: "Preemption signal received" in log.read_text(errors="replace"))
    checkpointed = time.monotonic() - start
    until(urgent, "RUNNING", *GONE)
    urgent_running = time.monotonic() - start
    until(urgent, "")
    victim_running = until(victim, "RUNNING")
    sh("scancel", victim)
    until(victim, "")
    result = {"preempt_checkpointed_s": checkpointed, "preempt_urgent_running_s": urgent_running}
    return result | {"preempt_victim_running_s": victim_running}


# A step that grows at a steady rate until the sampler (JobAcctGatherFrequency) kills it.
GROW = """import sys, time
rate, chunk, held, t0 = float(sys.argv[1]), 16 << 20, [], time.monotonic()
while True:
    block = bytearray(chunk); block[::4096] = b"x" * len(block[::4096]); held.append(block)
    print(len(held) * 16, round(time.monotonic() - t0, 3), flush=True)
    time.sleep(max(0.0, t0 + len(held) * 16 / rate - time.monotonic()))
"""


def memory(*rates: str) -> dict[str, float]:
    """A step over --mem=256M growing at RATE MiB/s: how far past the limit it got before
    OverMemoryKill ended it (its last sample, in MiB) and how long after it crossed the limit."""
    import re
    import tempfile

    out: dict[str, float] = {}
    for rate in rates or ("100", "400"):
        with tempfile.NamedTemporaryFile(
            "w", suffix=".out", dir=os.environ["SLURMLAB_SHARED"]
        ) as log:
            job = sh("sbatch", "--parsable", "--mem=256M", "-o", log.name, "--wrap",
                     f"srun python3 -c '{GROW}' {rate}")  # fmt: skip
            until(job, "")
            text = Path(log.name).read_text()
        killed = re.search(r"exceeded memory limit \((\d+) > (\d+)\)", text)
        grown = [line.split() for line in text.splitlines() if re.match(r"^\d+ [0-9.]+$", line)]
        if not killed or not grown:
            raise RuntimeError(f"job {job} was not killed for its memory:\n{text[-2000:]}")
        used, limit = (int(n) / 2**20 for n in killed.groups())
        crossed = next(float(t) for mib, t in grown if int(mib) > limit)
        out[f"oom_overshoot_{rate}_mib"] = used - limit
        out[f"oom_kill_after_{rate}_s"] = float(grown[-1][1]) - crossed
    return out


if __name__ == "__main__":
    probes = {"running": running, "training": training, "imports": imports, "requeue": requeue}
    probes |= {"memory": memory}
    # every probe starts on an empty queue with every node idle (none still COMPLETING)
    wait(lambda: not sh("squeue", "-h") and set(sh("sinfo", "-h", "-o", "%t").split()) == {"idle"})
    print(json.dumps((probes | {"preempt": preempt})[sys.argv[1]](*sys.argv[2:])))
