"""What a run tells its reader: the log format, the header, the start record, and the final
result (completed or preempted) with its plot.

Rank 0 logs INFO to stdout; other ranks only warnings and errors, prefixed with their rank.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainer.build import Training
from trainer.data import dataset_dir
from trainer.distributed import on_main
from trainer.metrics import MetricsWriter
from trainer.models import count_parameters
from trainer.preemption import PreemptionFlag, requeue
from trainer.run_state import RunState

log = logging.getLogger("trainer")

__all__ = ["finish", "log_start", "setup_logging"]


class _RankFormatter(logging.Formatter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] " if rank else ""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"{record.levelname}: {msg}"
        return self.prefix + msg


def setup_logging(rank: int) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_RankFormatter(rank))
    log.handlers = [handler]
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.propagate = False


# ---------------------------------------------------------------- the start
def log_start(
    t: Training, state: RunState, flag: PreemptionFlag, resumed_from: str | None
) -> MetricsWriter:
    """Print the header (rank 0) and open metrics.jsonl with its start record."""
    metrics = MetricsWriter(Path(t.cfg.output_dir) / "metrics.jsonl", enabled=t.topo.is_main)
    if resumed_from:
        metrics.truncate_after(state.global_step)
    if t.topo.is_main:
        for line in _header(t, flag):
            log.info("%s", line)
        if resumed_from:
            log.info(
                "Resumed from %s (epoch %d, batch %d, step %d)",
                resumed_from,
                state.epoch,
                state.batch_in_epoch,
                state.global_step,
            )
    metrics.log(
        {
            "kind": "start",
            "step": state.global_step,
            "epoch": state.epoch,
            "world_size": t.topo.world_size,
            "global_batch": t.global_batch,
            "lr": t.lr,
            "restart_count": t.topo.restart_count,
            "resumed_from": resumed_from,
            "backend": t.backend,
            "device": str(t.device),
        }
    )
    return metrics


def _header(t: Training, flag: PreemptionFlag) -> list[str]:
    cfg, topo = t.cfg, t.topo
    precision = str(t.amp_dtype).replace("torch.", "") if t.amp_dtype else "fp32"
    every_steps = cfg.checkpoint_every_steps
    return [
        f"slurmlab trainer | torch {torch.__version__} | python {sys.version.split()[0]}",
        f"Topology: launcher={topo.launcher} rank={topo.rank} world_size={topo.world_size} "
        f"local_world_size={topo.local_world_size} nodes={topo.num_nodes or 'n/a'} "
        f"master={topo.master_addr}:{topo.master_port}",
        f"Device: {t.device}, backend={t.backend}, precision={precision}, "
        f"channels_last={cfg.channels_last}, compile={cfg.compile}, "
        f"cpu_threads={torch.get_num_threads()}",
        f"Model: {cfg.model} ({count_parameters(t.model) / 1e6:.2f}M params); data: "
        f"{cfg.dataset} from {dataset_dir(cfg.dataset, cfg.data_dir)} ({len(t.data.train_y)} "
        f"train / {len(t.data.val_y)} val), loader={cfg.loader}, augment={cfg.augment}",
        f"Batch: {cfg.batch_size}/rank x {topo.world_size} ranks = global batch "
        f"{t.global_batch}; {_lr_rule(t)}",
        f"Optimizer: {_optimizer(t)}, weight_decay={cfg.weight_decay:g}"
        f"{'' if cfg.decay_norm_and_bias else ' (not on BN/bias)'}, "
        f"label_smoothing={cfg.label_smoothing:g}; schedule={cfg.schedule}, warm-up "
        f"{t.warmup_steps} steps, {t.steps_per_epoch} steps/epoch x {cfg.epochs} epochs = "
        f"{t.total_steps} steps",
        f"Output: {cfg.output_dir}; checkpoints: {cfg.checkpoint_dir} (keep "
        f"{cfg.keep_checkpoints or 'all'}, every epoch"
        f"{f' and every {every_steps} steps' if every_steps else ''})",
        f"Preemption: {_signal(flag)}; restart {topo.restart_count}, "
        f"max_requeues={cfg.max_requeues}, requeue id {topo.requeue_id}",
    ]


def _lr_rule(t: Training) -> str:
    cfg = t.cfg
    if cfg.lr_scaling != "linear":
        return f"lr {t.lr:g} (no scaling)"
    return (
        f"lr {cfg.lr:g} @ global batch {cfg.lr_reference_batch} -> {t.lr:g} "
        f"(linear scaling x{t.global_batch / cfg.lr_reference_batch:g})"
    )


def _optimizer(t: Training) -> str:
    cfg = t.cfg
    if cfg.optimizer == "sgd":
        return f"sgd momentum={cfg.momentum:g} nesterov={cfg.nesterov}"
    return f"adamw betas=({cfg.adam_beta1:g}, {cfg.adam_beta2:g})"


def _signal(flag: PreemptionFlag) -> str:
    if flag.signum is not None and flag.installed:
        return f"{flag.signum.name} checked every {flag.check_every} step(s)"
    return "not handled by the trainer"


# ---------------------------------------------------------------- the end
def finish(
    t: Training,
    state: RunState,
    metrics: MetricsWriter,
    *,
    preempted: bool,
    started: float,
    resumed_from: str | None,
) -> dict[str, Any]:
    """Log and record how the run ended; returns the result dict ``run`` returns."""
    if preempted:
        return _finish_preempted(t, state, metrics, started=started, resumed_from=resumed_from)
    res = _result(t, state, started=started, resumed_from=resumed_from, status="completed")
    metrics.log(
        {
            "kind": "final",
            "step": state.global_step,
            **{k: res[k] for k in ("epochs_completed", "val_acc", "best_val_acc")},
        }
    )
    _write_plot(t)
    va, best = res["val_acc"], res["best_val_acc"]
    log.info(
        "Final: epoch=%d val_acc=%s best_val_acc=%s world_size=%d global_batch=%d "
        "steps=%d time=%.1fs checkpoint=%s",
        state.epoch,
        f"{va:.2f}%" if va is not None else "n/a",
        f"{best:.2f}%" if best is not None else "n/a",
        t.topo.world_size,
        t.global_batch,
        state.global_step,
        res["elapsed_s"],
        state.last_checkpoint,
    )
    return res


def _finish_preempted(
    t: Training,
    state: RunState,
    metrics: MetricsWriter,
    *,
    started: float,
    resumed_from: str | None,
) -> dict[str, Any]:
    """Rank 0 asks Slurm to requeue the job (within max_requeues); every rank learns the answer."""
    log.info(
        "Preemption signal received: stopped at epoch %d batch %d (step %d), checkpoint %s",
        state.epoch,
        state.batch_in_epoch,
        state.global_step,
        state.last_checkpoint,
    )

    def decide() -> tuple[bool, int, str]:
        r = requeue(t.topo.requeue_id, t.topo.restart_count, t.cfg.max_requeues)
        return r.requeued, r.exit_code, r.message

    requeued, code, message = on_main(t.topo, decide)
    log.info("Preempted: %s (exit code %d)", message, code)
    metrics.log(
        {
            "kind": "preempted",
            "step": state.global_step,
            "epoch": state.epoch,
            "requeued": requeued,
            "exit_code": code,
            "message": message,
        }
    )
    _write_plot(t)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return _result(
        t,
        state,
        started=started,
        resumed_from=resumed_from,
        status="preempted",
        exit_code=code,
        requeued=requeued,
    )


def _result(
    t: Training,
    state: RunState,
    *,
    started: float,
    resumed_from: str | None,
    status: str,
    exit_code: int = 0,
    requeued: bool = False,
) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    return {
        "status": status,
        "exit_code": exit_code,
        "requeued": requeued,
        "epochs_completed": state.epoch,
        "epochs": t.cfg.epochs,
        "global_step": state.global_step,
        "val_acc": last.get("val_acc"),
        "val_loss": last.get("val_loss"),
        "train_acc": last.get("train_acc"),
        "train_loss": last.get("train_loss"),
        "best_val_acc": max((h["val_acc"] for h in state.history), default=None),
        "world_size": t.topo.world_size,
        "global_batch": t.global_batch,
        "lr_effective": t.lr,
        "checkpoint": state.last_checkpoint,
        "resumed_from": resumed_from,
        "output_dir": t.cfg.output_dir,
        "metrics_path": str(Path(t.cfg.output_dir) / "metrics.jsonl"),
        "elapsed_s": time.time() - started,
    }


def _write_plot(t: Training) -> None:
    if not (t.cfg.plot and t.topo.is_main):
        return
    try:
        from trainer.plot import plot_run

        log.info("Curves: %s", plot_run(t.cfg.output_dir))
    except Exception as exc:
        log.warning("could not write curves.png: %s", exc)
