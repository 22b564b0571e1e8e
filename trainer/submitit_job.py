"""submitit entry point: a Checkpointable that runs the trainer with its own handler disabled.

    import os

    import submitit
    from trainer.config import load_config, shared_path
    from trainer.submitit_job import TrainJob

    cfg = load_config("jobs/configs/simple_cnn_synthetic.yaml", ["checkpoint_every_steps=50"])
    ex = submitit.AutoExecutor(folder=os.path.abspath(shared_path("submitit", "%j")))
    ex.update_parameters(nodes=2, tasks_per_node=1, gpus_per_node=1, timeout_min=30)
    job = ex.submit(TrainJob(cfg))
    print(job.result())  # the run() result dict of rank 0

The trainer handles SIGUSR2 (before the time limit, or when Slurm preempts the job) exactly as
under sbatch: every rank stops at the same step, that step is checkpointed, and rank 0 requeues
the job under its own id, or leaves the requeue to Slurm when Slurm is preempting it. The process
then exits without a result, so submitit waits for the requeued run, which calls this object
again and resumes from that checkpoint. submitit's own handler (which would checkpoint on rank 0
only, through :meth:`TrainJob.checkpoint`, and requeue even when Slurm already does) is only in
charge before the trainer starts. Left empty, ``output_dir`` resolves on the nodes to
``$SLURMLAB_SHARED/runs/$SLURM_JOB_ID``, which a requeue keeps; outside Slurm set it explicitly.
"""

from __future__ import annotations

import sys
from typing import Any

try:
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # pragma: no cover - submitit is optional for the CLI
    Checkpointable = object  # type: ignore[assignment,misc]
    DelayedSubmission = None  # type: ignore[assignment,misc]

from trainer.config import Config


class TrainJob(Checkpointable):  # type: ignore[misc,valid-type]
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def __call__(self) -> dict[str, Any]:
        from trainer.train import run

        result = run(self.cfg, handle_signals=True)
        if result["status"] == "preempted" and result["requeued"]:
            sys.exit(0)  # no result for submitit to record: the requeued run returns it
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Runs on rank 0 only when submitit gets the signal: no collectives, just resubmit."""
        if DelayedSubmission is None:
            raise RuntimeError("submitit is not installed")
        return DelayedSubmission(TrainJob(self.cfg))
