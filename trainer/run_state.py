"""Where a run stands (:class:`RunState`), and saving / restoring it through checkpoints.

trainer/checkpoint.py owns the file format (atomic write, keep-last-K, validity); this module
owns what goes into a checkpoint and how a run picks the one to resume from.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from trainer.build import Training
from trainer.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    capture_rng,
    find_latest_valid,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from trainer.config import Config
from trainer.distributed import SetupError, all_ok, in_process_group, on_main

log = logging.getLogger("trainer")

__all__ = ["RunState", "resume", "save"]

Sums = tuple[torch.Tensor, torch.Tensor, int]  # the epoch so far: loss x n, correct, n


@dataclass
class RunState:
    epoch: int = 0  # epochs completed == index of the epoch in progress
    batch_in_epoch: int = 0  # batches done in the epoch in progress
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss*n, correct, n
    last_checkpoint: str | None = None
    last_checkpoint_step: int = -1


def save(t: Training, state: RunState, sums: Sums | None = None) -> str:
    """Collective: gather RNG states, rank 0 writes atomically; returns the path.

    ``sums`` are the running training sums of an epoch in progress (a mid-epoch save)."""
    if sums is not None:
        state.partial = [float(sums[0].item()), float(sums[1].item()), float(sums[2])]
    rng = capture_rng()
    rng_states: list[Any] | None = [rng]
    if in_process_group():
        rng_states = [None] * t.topo.world_size if t.topo.is_main else None
        dist.gather_object(rng, rng_states, dst=0)

    def write() -> str:
        payload = {
            "format_version": FORMAT_VERSION,
            "model_name": t.cfg.model,
            "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict() if t.scaler is not None else None,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "global_step": state.global_step,
            "steps_per_epoch": t.steps_per_epoch,
            "world_size": t.topo.world_size,
            "train_partial": list(state.partial),
            "history": list(state.history),
            "rng_states": rng_states,
            "config": t.cfg.to_dict(),
            "torch_version": str(torch.__version__),
            "saved_at": time.time(),
        }
        return str(save_checkpoint(t.cfg.checkpoint_dir, payload, t.cfg.keep_checkpoints))

    path = on_main(t.topo, write)
    state.last_checkpoint, state.last_checkpoint_step = path, state.global_step
    log.info("Checkpoint saved: %s", path)
    return path


def resume(t: Training) -> tuple[RunState, str | None]:
    """Collective: the run's state, restored from the checkpoint rank 0 chooses, if any."""
    state = RunState()
    path = on_main(t.topo, lambda: _choose(t.cfg))
    if path:
        error = ""
        try:
            _restore(t, state, path)
        except Exception as exc:
            error = f"rank {t.topo.rank}: cannot load {path}: {exc}"
        if not all_ok(not error, t.device):
            raise SetupError(error or f"another rank could not load {path}")
    return state, path


def _choose(cfg: Config) -> str | None:
    """Rank 0: the checkpoint to resume from (None = fresh start)."""
    existing = list_checkpoints(cfg.checkpoint_dir)
    if cfg.resume == "never":
        if existing:
            raise CheckpointError(
                f"resume=never but {cfg.checkpoint_dir} already holds {len(existing)} "
                "checkpoint(s); a fresh run there would mix with them. Use a new output_dir / "
                "checkpoint_dir, delete them, or set resume=auto."
            )
        return None
    if cfg.resume == "auto":
        found = find_latest_valid(cfg.checkpoint_dir, cfg.model)
        if found is None and existing:
            log.warning(
                "No valid checkpoint among %d file(s) in %s: starting from scratch",
                len(existing),
                cfg.checkpoint_dir,
            )
        return str(found[0]) if found else None
    payload = load_checkpoint(cfg.resume)
    if payload["model_name"] != cfg.model:
        raise CheckpointError(
            f"{cfg.resume} is a checkpoint of model {payload['model_name']!r}, not {cfg.model!r}"
        )
    return cfg.resume


def _restore(t: Training, state: RunState, path: str) -> None:
    payload = load_checkpoint(path)
    t.model.load_state_dict(payload["model"])
    t.optimizer.load_state_dict(payload["optimizer"])
    t.scheduler.load_state_dict(payload["scheduler"])
    # the lr scaling rule is re-applied for the current world size / batch
    t.scheduler.base_lrs = [t.lr for _ in t.optimizer.param_groups]
    factors = [f(t.scheduler.last_epoch) for f in t.scheduler.lr_lambdas]
    for group, factor in zip(t.optimizer.param_groups, factors, strict=True):
        group["initial_lr"], group["lr"] = t.lr, t.lr * factor
    if t.scaler is not None and payload.get("scaler"):
        t.scaler.load_state_dict(payload["scaler"])
    state.epoch, state.batch_in_epoch = int(payload["epoch"]), int(payload["batch_in_epoch"])
    state.global_step = int(payload["global_step"])
    state.history = list(payload.get("history", []))
    state.partial = list(payload.get("train_partial", [0.0, 0.0, 0.0]))
    state.last_checkpoint, state.last_checkpoint_step = path, state.global_step
    if state.batch_in_epoch and payload.get("steps_per_epoch") != t.steps_per_epoch:
        log.warning(
            "Steps per epoch changed (%s -> %d, batch size or world size changed): "
            "restarting epoch %d from its first batch",
            payload.get("steps_per_epoch"),
            t.steps_per_epoch,
            state.epoch,
        )
        state.batch_in_epoch, state.partial = 0, [0.0, 0.0, 0.0]
    states = payload["rng_states"]
    same_world = len(states) == t.topo.world_size
    restore_rng(states[t.topo.rank] if same_world else states[0])
