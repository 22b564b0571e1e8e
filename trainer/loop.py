"""The training step, the epoch loop and validation: what happens between build and finish.

Every function takes the :class:`~trainer.build.Training` built once from the config and the
:class:`~trainer.run_state.RunState` it advances. The only host syncs on the step path are the
``log_every`` interval all-reduce and the preemption-flag check.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.build import Training
from trainer.distributed import in_process_group, sync_buffers
from trainer.metrics import MetricsWriter, host_stats, host_stats_line
from trainer.preemption import PreemptionFlag
from trainer.run_state import RunState, Sums, save

log = logging.getLogger("trainer")

__all__ = ["evaluate", "fit", "train_step"]


def train_step(t: Training, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward (DDP all-reduces gradients), optimizer + lr step. No host sync."""
    with torch.autocast(
        x.device.type, dtype=t.amp_dtype or torch.float32, enabled=t.amp_dtype is not None
    ):
        logits = t.train_model(x)
        loss = t.criterion(logits, y)
    t.optimizer.zero_grad(set_to_none=True)
    if t.scaler is not None:  # fp16: scale the loss so small gradients survive
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        loss.backward()
        t.optimizer.step()
    t.scheduler.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


def fit(t: Training, state: RunState, flag: PreemptionFlag, metrics: MetricsWriter) -> bool:
    """Train from ``state`` to the last epoch; True when a preemption signal stopped it (the
    checkpoint of the stopping step is saved)."""
    for epoch in range(state.epoch, t.cfg.epochs):
        started, first_batch = time.perf_counter(), state.batch_in_epoch
        sums = train_epoch(t, state, flag, metrics, epoch)
        if sums is None:
            return True
        images = (t.steps_per_epoch - first_batch) * t.global_batch
        record = end_epoch(t, epoch, state.global_step, sums, started=started, images=images)
        metrics.log(record)
        state.history.append(record)
        state.epoch, state.batch_in_epoch, state.partial = epoch + 1, 0, [0.0, 0.0, 0.0]
        save(t, state)
        if epoch + 1 < t.cfg.epochs and flag.check(state.global_step, force=True):
            return True
    return False


def train_epoch(
    t: Training, state: RunState, flag: PreemptionFlag, metrics: MetricsWriter, epoch: int
) -> Sums | None:
    """One epoch from ``state.batch_in_epoch``; its training sums, or None when preempted."""
    cfg, device = t.cfg, t.device
    t.train_loader.set_epoch(epoch)
    loss_sum = torch.tensor(state.partial[0], dtype=torch.float64, device=device)
    correct = torch.tensor(state.partial[1], dtype=torch.float64, device=device)
    count = int(state.partial[2])
    interval_start, interval_images = time.perf_counter(), 0
    start = state.batch_in_epoch
    for i, (x, y) in enumerate(t.train_loader.iter_from(start), start=start):
        loss, n_correct = train_step(t, x, y)
        loss_sum += loss.double() * y.shape[0]
        correct += n_correct
        count += y.shape[0]
        interval_images += y.shape[0] * t.topo.world_size
        state.global_step += 1
        state.batch_in_epoch = i + 1
        if (i + 1) % cfg.log_every == 0:
            img_s = interval_images / max(time.perf_counter() - interval_start, 1e-9)
            sums = (loss_sum, correct, count)
            at = {"epoch": epoch, "batch": i + 1, "step": state.global_step}
            _log_interval(t, metrics, sums, at=at, img_s=img_s)
            interval_start, interval_images = time.perf_counter(), 0
        mid_epoch = i + 1 < t.steps_per_epoch
        every = cfg.checkpoint_every_steps
        if every and state.global_step % every == 0 and mid_epoch:
            save(t, state, (loss_sum, correct, count))
        if flag.check(state.global_step):
            if state.last_checkpoint_step != state.global_step:
                save(t, state, (loss_sum, correct, count))
            return None
    return loss_sum, correct, count


def _all_reduced(sums: Sums) -> list[float]:
    """The sums over every rank, on the host (a sync: only at log intervals and epoch ends)."""
    loss_sum, correct, count = sums
    n = torch.tensor(float(count), dtype=torch.float64, device=loss_sum.device)
    t = torch.stack([loss_sum, correct, n])
    if in_process_group():
        dist.all_reduce(t)
    return t.tolist()


def _log_interval(
    t: Training, metrics: MetricsWriter, sums: Sums, *, at: dict[str, int], img_s: float
) -> None:
    """Running epoch loss/accuracy summed over ranks; ``at`` = epoch, batch and step."""
    loss_sum, correct, n = _all_reduced(sums)
    lr = t.optimizer.param_groups[0]["lr"]
    log.info(
        "Epoch: %d, Batch: %d, Loss: %.4f, Acc: %.2f%%, %.0f img/s, lr %.5f",
        at["epoch"],
        at["batch"],
        loss_sum / n,
        100.0 * correct / n,
        img_s,
        lr,
    )
    metrics.log(
        {
            "kind": "train",
            **at,
            "loss": loss_sum / n,
            "acc": 100.0 * correct / n,
            "img_per_s": img_s,
            "lr": lr,
        }
    )


def end_epoch(
    t: Training, epoch: int, step: int, sums: Sums, *, started: float, images: int
) -> dict[str, Any]:
    """All-reduce the epoch's training sums, validate, log and return the epoch record."""
    loss_sum, correct, count = _all_reduced(sums)
    train_time = time.perf_counter() - started
    sync_buffers(t.model)
    val_loss, val_acc, val_count = evaluate(t.eval_model, t.val_loader, t.device, t.amp_dtype)
    if val_count != len(t.data.val_y):
        raise RuntimeError(f"validation counted {val_count} samples, expected {len(t.data.val_y)}")
    record = {
        "kind": "epoch",
        "epoch": epoch,
        "step": step,
        "train_loss": loss_sum / max(count, 1),
        "train_acc": 100.0 * correct / max(count, 1),
        "val_loss": val_loss,
        "val_acc": val_acc,
        "val_count": val_count,
        "epoch_time_s": time.perf_counter() - started,
        "img_per_s": images / max(train_time, 1e-9),
        "lr": t.optimizer.param_groups[0]["lr"],
        **host_stats(),
    }
    log.info(
        "Epoch %d - Train Acc: %.2f%%, Val Acc: %.2f%%, Train Loss: %.4f, "
        "Val Loss: %.4f, time %.1fs, %.0f img/s",
        epoch,
        record["train_acc"],
        val_acc,
        record["train_loss"],
        val_loss,
        record["epoch_time_s"],
        record["img_per_s"],
    )
    log.info(host_stats_line())
    return record


@torch.no_grad()
def evaluate(
    model: Any, loader: Any, device: torch.device, amp_dtype: torch.dtype | None
) -> tuple[float, float, int]:
    """(mean loss, accuracy %, count) over the whole validation set, summed across ranks."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in loader:
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            logits = model(x)
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += y.shape[0]
    if in_process_group():
        dist.all_reduce(sums)
    loss_sum, correct, count = sums.tolist()
    model.train()
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1), int(count)
