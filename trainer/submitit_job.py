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

submitit sends SIGUSR2 before the time limit and calls :meth:`TrainJob.checkpoint` on rank 0
(no collectives may run there), then requeues the job under its own id; the requeued job
resumes from the latest valid checkpoint in ``output_dir`` (epoch checkpoints plus
``checkpoint_every_steps``). Left empty, ``output_dir`` resolves on the nodes to
``$SLURMLAB_SHARED/runs/$SLURM_JOB_ID``, which a requeue keeps; outside Slurm set it explicitly.
"""

from __future__ import annotations

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

        return run(self.cfg, handle_signals=False)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Runs on rank 0 only when submitit gets the signal: no collectives, just resubmit."""
        if DelayedSubmission is None:
            raise RuntimeError("submitit is not installed")
        return DelayedSubmission(TrainJob(self.cfg))
