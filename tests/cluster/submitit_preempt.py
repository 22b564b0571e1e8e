"""Driver for test_jobs.py, run on the login node: submit a 2-node DDP run with submitit, preempt
it through submitit's own interrupt once it has a checkpoint, and print the final result.

    python tests/cluster/submitit_preempt.py --config jobs/configs/simple_cnn_synthetic.yaml
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--wait-s", type=float, default=600)
    args = parser.parse_args()

    # jobs/submit.py is a script, not a module: load it from its path.
    spec = importlib.util.spec_from_file_location("slurmlab_submit", REPO / "jobs" / "submit.py")
    assert spec and spec.loader
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)

    params = submit.slurm_parameters("preempt-test", 2, 1, 20, None)
    executor = submit.make_executor(os.path.abspath(submit.shared_path("submitit", "%j")), params)
    overrides = ["epochs=4", "checkpoint_every_steps=5"]
    job = executor.submit(submit.TrainJob(submit.load_config(args.config, overrides)))
    print(f"submitted job {job.job_id}", flush=True)

    checkpoints = submit.shared_path("runs", job.job_id, "checkpoints", "*.pt")
    deadline = time.monotonic() + args.wait_s
    while not glob.glob(checkpoints):
        if job.done() or time.monotonic() > deadline:
            raise SystemExit(f"job {job.job_id} made no checkpoint to resume from: {job.state}")
        time.sleep(1)
    job._interrupt()  # preemption as submitit tests it: SIGTERM, then USR2 -> checkpoint+requeue
    print(f"interrupted job {job.job_id}", flush=True)

    result = job.results()[0]  # one per rank; rank 0 speaks for the run
    for key in ["status", "resumed_from", "epochs_completed", "epochs", "val_acc"]:
        print(f"result {key}={result[key]}")


if __name__ == "__main__":
    main()
