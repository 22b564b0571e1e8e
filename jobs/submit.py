#!/usr/bin/env python3
"""Submit the DDP trainer to Slurm with submitit.

    python jobs/submit.py                                  # 4-node DDP run of the default config
    python jobs/submit.py --nodes 2 model=simple_cnn epochs=3
    python jobs/submit.py --nodes 2 --gpus-per-node 2      # 2 nodes x 2 GPUs: 4 ranks
    python jobs/submit.py --sweep lr=0.05,0.1,0.2 --config jobs/configs/simple_cnn_synthetic.yaml

Run it from the project checkout on a login node (in slurmlab: `make shell`). The submitit folder
must be on a filesystem that every node sees at the same path (default: $SLURMLAB_SHARED/submitit,
or submitit/ in the working directory when SLURMLAB_SHARED is not set).

Timeouts and preemption: submitit asks Slurm for USR2 shortly before the time limit (Slurm sends
it at once when it preempts the job); the trainer checkpoints that step and the job is requeued
under the same id (trainer/submitit_job.py), and the next run resumes from it, in
$SLURMLAB_SHARED/runs/<job id>.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/submit.py` puts jobs/ on sys.path, not the checkout
    sys.path.insert(0, str(REPO))

from slurmlab.facts import ACTIVE_JOB_STATES  # noqa: E402  (standard library only)
from trainer.config import ConfigError, load_config, shared_path  # noqa: E402
from trainer.submitit_job import TrainJob  # noqa: E402

DEFAULT_CONFIG = "jobs/configs/resnet50_cifar10.yaml"


def slurm_parameters(
    name: str, nodes: int, gpus_per_node: int, timeout_min: int, partition: str | None
) -> dict[str, Any]:
    """sbatch parameters in submitit's SlurmExecutor vocabulary (golden-file tested)."""
    params: dict[str, Any] = {
        "job_name": name,
        "nodes": nodes,
        "ntasks_per_node": gpus_per_node,  # one rank per GPU; each takes GPU LOCAL_RANK
        "gpus_per_node": gpus_per_node,
        "cpus_per_task": 1,
        "mem_per_gpu": "8G",  # host memory per rank, as jobs/train_ddp.sbatch asks
        "time": timeout_min,
        "signal_delay_s": 120,
        "additional_parameters": {"requeue": True},
    }
    if partition:
        params["partition"] = partition
    return params


def make_executor(folder: str, params: dict[str, Any]) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
    executor.update_parameters(**params)
    return executor


def sweep_grid(specs: list[str]) -> list[list[str]]:
    """`lr=0.05,0.1 epochs=2,3` -> every combination, as lists of overrides."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"error: --sweep takes key=v1,v2,... (got {spec!r})")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)]


def final_states(job_ids: list[str], timeout_s: float = 120) -> dict[str, str]:
    """Each job's final Slurm state from accounting, waiting (bounded) until Slurm has closed it.

    submitit hands back a result as soon as the task has written it, while Slurm may still be
    ending the job: a state read at that moment can still say RUNNING.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        states = {job: state.split()[0] for job, state in states.items() if job in job_ids}
        done = len(states) == len(job_ids) and not set(ACTIVE_JOB_STATES) & set(states.values())
        if done or time.monotonic() > deadline:
            return {job: states.get(job, "UNKNOWN") for job in job_ids}
        time.sleep(1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.environ.get("CONFIG", DEFAULT_CONFIG))
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus-per-node", type=int, default=1)
    p.add_argument("--timeout-min", type=int, default=120)
    p.add_argument("--partition", default=None)
    p.add_argument("--folder", default=os.path.abspath(shared_path("submitit", "%j")))
    p.add_argument("--sweep", nargs="+", metavar="KEY=V1,V2", help="job array over a grid")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    grid = sweep_grid(args.sweep) if args.sweep else [[]]
    # Reject a bad config or override before anything is submitted.
    try:
        configs = [load_config(args.config, [*args.overrides, *point]) for point in grid]
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2

    if args.sweep:
        # Each grid point is an independent single-node run: one job array.
        params = slurm_parameters("sweep", 1, args.gpus_per_node, args.timeout_min, args.partition)
        executor = make_executor(args.folder, params)
        jobs = executor.submit_array([TrainJob(cfg) for cfg in configs])
        print(f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks)", flush=True)
        if args.no_wait:
            return 0
        results = [job.result() for job in jobs]
        states = final_states([job.job_id for job in jobs])
        print(f"{'job':<12} {'overrides':<40} {'state':<10} {'val_acc':>8} {'epochs':>6}")
        for job, point, result in zip(jobs, grid, results, strict=True):
            print(
                f"{job.job_id:<12} {' '.join(point):<40} {states[job.job_id]:<10} "
                f"{result['val_acc']:>8.2f} {result['epochs_completed']:>6}"
            )
        return 0 if set(states.values()) == {"COMPLETED"} else 1

    params = slurm_parameters(
        "ddp-submitit", args.nodes, args.gpus_per_node, args.timeout_min, args.partition
    )
    executor = make_executor(args.folder, params)
    job = executor.submit(TrainJob(configs[0]))
    print(
        f"submitted job {job.job_id} ({args.nodes} nodes); output: {job.paths.stdout}", flush=True
    )
    if args.no_wait:
        return 0
    results = job.results()  # one per task (rank)
    rank0 = results[0]
    state = final_states([job.job_id])[job.job_id]
    print(f"job {job.job_id}: {len(results)} ranks returned, {state}; rank 0: {rank0}")
    return 0 if state == "COMPLETED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
