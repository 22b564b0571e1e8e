"""Driver for the submitit preemption tests, run on the login node: submit a DDP run with
submitit, preempt it once it has a checkpoint, and print the final result.

    python tests/cluster/submitit_preempt.py --config jobs/configs/simple_cnn_synthetic.yaml
    python tests/cluster/submitit_preempt.py --config ... --nodes 4 --by urgent

--by interrupt: submitit's own interrupt (what submitit's tests do: SIGTERM, then USR2).
--by urgent: what a production cluster does: a job in the higher-priority partition `urgent`
takes the nodes; Slurm signals the run (slurm.conf PreemptParameters=send_user_signal).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--wait-s", type=float, default=600)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--by", choices=["interrupt", "urgent"], default="interrupt")
    args = parser.parse_args()

    # jobs/submit.py is a script, not a module: load it from its path.
    spec = importlib.util.spec_from_file_location("slurmlab_submit", REPO / "jobs" / "submit.py")
    assert spec and spec.loader
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)

    params = submit.slurm_parameters("preempt-test", args.nodes, 1, 20, None)
    executor = submit.make_executor(os.path.abspath(submit.shared_path("submitit", "%j")), params)
    # Half the demo's set, in a folder of its own: the preemption is tested, not the training.
    data = ["data_dir=" + submit.shared_path("tests", "data"), "synthetic_train=4000"]
    overrides = [*data, "synthetic_val=1000", "epochs=2", "checkpoint_every_steps=5"]
    job = executor.submit(submit.TrainJob(submit.load_config(args.config, overrides)))
    print(f"submitted job {job.job_id}", flush=True)

    checkpoints = submit.shared_path("runs", job.job_id, "checkpoints", "*.pt")
    deadline = time.monotonic() + args.wait_s
    while not glob.glob(checkpoints):
        if job.done() or time.monotonic() > deadline:
            raise SystemExit(f"job {job.job_id} made no checkpoint to resume from: {job.state}")
        time.sleep(1)
    if args.by == "urgent":
        urgent = subprocess.run(
            [
                "sbatch",
                "--parsable",
                "-p",
                "urgent",
                "-N1",
                "--gpus-per-node=1",  # the victim holds every GPU: only preemption frees one
                "-o",
                "/dev/null",
                "--wrap",
                "hostname",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"urgent job {urgent}", flush=True)
    else:
        job._interrupt()  # as submitit tests it: SIGTERM, then USR2 -> checkpoint + requeue
        print(f"interrupted job {job.job_id}", flush=True)

    result = job.results()[0]  # one per rank; rank 0 speaks for the run
    print(f"victim job {job.job_id}")
    for key in ["status", "resumed_from", "epochs_completed", "epochs", "val_acc"]:
        print(f"result {key}={result[key]}")
    print(job.stdout() or "")  # rank 0's log, both runs (submitit appends)


if __name__ == "__main__":
    main()
