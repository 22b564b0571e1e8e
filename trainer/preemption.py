"""Preemption: the signal handler only sets a flag; the training loop polls it collectively.

* :class:`PreemptionFlag` installs the handler (default SIGUSR2) and, every ``check_every``
  steps, all-reduces the flag (MAX) so every rank stops at the same step boundary even when only
  some ranks received the signal.
* :func:`requeue` runs ``scontrol requeue <id>`` (rank 0), honouring ``max_requeues`` via
  SLURM_RESTART_COUNT; when Slurm itself is preempting the job (a higher-priority partition's
  job wants the nodes) it leaves the requeue to Slurm.

Exit codes: 0 after a successful requeue, :data:`EXIT_PREEMPTED` (75, EX_TEMPFAIL) when the
checkpoint was saved but the job was not requeued (not under Slurm, cap reached, scontrol failed).
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("trainer")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: preempted, checkpoint saved, not requeued

__all__ = ["EXIT_PREEMPTED", "PreemptionFlag", "RequeueResult", "preempted_by_slurm", "requeue"]


class PreemptionFlag:
    def __init__(
        self, signum: signal.Signals | None, check_every: int, device: torch.device
    ) -> None:
        self.signum = signum
        self.check_every = max(1, check_every)
        self.device = device
        self.received = False
        self.received_at: float | None = None
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = True  # only set a flag: no I/O, no collectives in a handler
        if self.received_at is None:
            self.received_at = time.time()

    @property
    def installed(self) -> bool:
        return self._installed

    def install(self) -> None:
        if self.signum is None or threading.current_thread() is not threading.main_thread():
            if self.signum is not None:
                log.warning("Not in the main thread: preemption signal handler not installed")
            return
        self._previous = signal.signal(self.signum, self._handler)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed and self.signum is not None:
            signal.signal(self.signum, self._previous)
            self._installed = False

    def request(self) -> None:
        """Ask for a preemption stop programmatically (same effect as the signal)."""
        self._handler(0, None)

    def check(self, step: int, force: bool = False) -> bool:
        """Collective: True on every rank if any rank got the signal. Call at step boundaries.

        Only every ``check_every`` steps (or when ``force``) does it communicate; the value is
        read back with one host sync, so on GPU a larger interval keeps the step path async.
        """
        if not force and step % self.check_every:
            return False
        if not (dist.is_available() and dist.is_initialized()):
            return self.received
        flag = torch.tensor([1.0 if self.received else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


@dataclass
class RequeueResult:
    requeued: bool
    exit_code: int
    message: str


def _output(cmd: list[str], timeout_s: float) -> str | None:
    """stdout of a Slurm client command, or None when it is missing, fails or hangs."""
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def preempted_by_slurm(job_id: str, timeout_s: float = 10.0) -> bool:
    """True when Slurm is preempting the job and will requeue it itself when it exits: squeue
    shows a PreemptTime, the job is requeueable, and its partition's PreemptMode is REQUEUE.

    Requeuing it with ``scontrol requeue`` as well would be worse than useless: Slurm 24.11 keeps
    the job's grace-preemption mark across a user requeue and requeues the *next* run once more
    when it completes (proc_req.c, _slurm_rpc_complete_batch_script, GRACE_PREEMPT). In any other
    case (CANCEL mode, a job without --requeue) the caller's own requeue is what saves the job.
    """
    fields = (
        _output(
            ["squeue", "-h", "-j", job_id, "-O", "PreemptTime:30,Requeue:4,Partition:64"], timeout_s
        )
        or ""
    ).split()
    if len(fields) != 3:
        return False
    preempt_time, requeueable, partition = fields
    if preempt_time in ("N/A", "None", "Unknown") or requeueable != "1":
        return False
    info = _output(["scontrol", "show", "partition", "-o", partition], timeout_s) or ""
    return "PreemptMode=REQUEUE" in info.split()


def requeue(
    requeue_id: str | None, restart_count: int, max_requeues: int, timeout_s: float = 60.0
) -> RequeueResult:
    """Rank 0: requeue the Slurm job if allowed; never raises."""
    if not requeue_id:
        return RequeueResult(
            False,
            EXIT_PREEMPTED,
            "not running under Slurm: checkpoint saved, not requeued; run the "
            "same command again to resume",
        )
    if preempted_by_slurm(requeue_id):
        return RequeueResult(
            True,
            0,
            f"Slurm is preempting job {requeue_id} and requeues it when it exits "
            f"(restart {restart_count + 1})",
        )
    if restart_count >= max_requeues:
        return RequeueResult(
            False,
            EXIT_PREEMPTED,
            f"requeue cap reached (SLURM_RESTART_COUNT={restart_count} >= "
            f"max_requeues={max_requeues}): checkpoint saved, job not requeued; "
            "resubmit it to continue",
        )
    exe = shutil.which("scontrol")
    if exe is None:
        return RequeueResult(
            False, EXIT_PREEMPTED, "scontrol not found on PATH: checkpoint saved, job not requeued"
        )
    try:
        proc = subprocess.run(
            [exe, "requeue", requeue_id],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return RequeueResult(False, EXIT_PREEMPTED, f"scontrol requeue {requeue_id} failed: {exc}")
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        return RequeueResult(
            False,
            EXIT_PREEMPTED,
            f"scontrol requeue {requeue_id} failed (exit {proc.returncode}): "
            f"{err}; checkpoint saved, job not requeued (was it submitted "
            "with --requeue?)",
        )
    return RequeueResult(
        True,
        0,
        f"requeued job {requeue_id} (restart {restart_count + 1} of at most {max_requeues})",
    )
