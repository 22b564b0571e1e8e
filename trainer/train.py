"""The training loop: ``run(cfg, handle_signals=True) -> dict``.

Works unchanged for a single process, torchrun, srun (one task per GPU) and submitit, on CUDA
(NCCL, bf16 autocast, channels_last) or CPU (gloo, fp32). See trainer/README.md.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

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
from trainer.config import Config, resolve_paths, signal_from_name
from trainer.data import build_loaders, dataset_dir, prepare_dataset, read_cifar_dir
from trainer.distributed import (
    Topology,
    cleanup_distributed,
    init_distributed,
    select_device,
    topology_from_env,
    validate_topology,
)
from trainer.metrics import MetricsWriter, host_stats, host_stats_line
from trainer.models import build_model, count_parameters
from trainer.preemption import EXIT_PREEMPTED, PreemptionFlag, RequeueResult, requeue

log = logging.getLogger("trainer")
DATA_STAGING_TIMEOUT_S = 2 * 3600  # other ranks wait this long for rank 0's download

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "run", "train_step"]


class SetupError(RuntimeError):
    """A problem reported by one rank (usually rank 0) and raised on every rank."""


# ---------------------------------------------------------------- small helpers
class _RankFormatter(logging.Formatter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] " if rank else ""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"{record.levelname}: {msg}"
        return self.prefix + msg


def _setup_logging(rank: int) -> None:
    """Rank 0 logs INFO to stdout; other ranks only warnings and errors, prefixed with the rank."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_RankFormatter(rank))
    log.handlers = [handler]
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.propagate = False


def _set_cpu_threads(cfg: Config, topo: Topology, device: torch.device) -> None:
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    elif device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
        on_node = os.environ.get("SLURM_CPUS_ON_NODE", "")
        if per_task.isdigit():
            torch.set_num_threads(int(per_task))
        elif on_node.isdigit():
            torch.set_num_threads(max(1, int(on_node) // topo.local_world_size))
        else:
            avail = (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else (os.cpu_count() or 1)
            )
            torch.set_num_threads(max(1, avail // topo.local_world_size))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _on_main(topo: Topology, fn: Callable[[], Any], group: Any = None) -> Any:
    """Run ``fn`` on rank 0; broadcast its result, or raise its error on every rank.

    Doubles as a barrier, so other ranks wait while rank 0 downloads / writes. ``group`` lets
    slow work (a download) wait on a process group with a longer timeout.
    """
    result: Any = None
    error: str | None = None
    failure: BaseException | None = None
    if topo.is_main:
        try:
            result = fn()
        except Exception as exc:
            if not _distributed():
                raise
            error, failure = f"{exc}", exc
    if _distributed():
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0, group=group)
        result, error = box[0]
    if error is not None:
        if failure is not None:
            raise failure  # the original exception (and traceback) on rank 0
        raise SetupError(f"rank 0 failed: {error}")
    return result


def _all_ok(ok: bool, device: torch.device) -> bool:
    if not _distributed():
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() == 0)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------- optimisation
def build_optimizer(
    model: nn.Module, cfg: Config, lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; no weight decay on 1-D params (BN, biases) unless configured."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 and not cfg.decay_norm_and_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    impl: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **impl)
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), **impl)


def lr_factor(step: int, schedule: str, warmup: int, total: int, final: float) -> float:
    """Multiplier of the peak lr used by optimizer step ``step`` (0-based), per-step schedules.

    cosine: linear warm-up from ~0 to 1 over ``warmup`` steps, then cosine to ``final``.
    onecycle: linear from 1/25 to 1 over ``warmup`` steps, then linear down to ``final``.
    constant: linear warm-up, then 1.
    """
    if schedule == "onecycle":
        if step < warmup:
            return 0.04 + 0.96 * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - (1.0 - final) * progress
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LambdaLR, int, int]:
    total = steps_per_epoch * cfg.epochs
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), max(total - 1, 0))

    def factor(step: int) -> float:
        return lr_factor(step, cfg.schedule, warmup, total, cfg.final_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), warmup, total


# ---------------------------------------------------------------- one step
def train_step(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    amp_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward (DDP all-reduces gradients), optimizer + lr step. No host sync."""
    with torch.autocast(
        x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    ):
        logits = model(x)
        loss = criterion(logits, y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    scheduler.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, device: torch.device, amp_dtype: torch.dtype | None
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
    if _distributed():
        dist.all_reduce(sums)
    loss_sum, correct, count = sums.tolist()
    model.train()
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1), int(count)


def _sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics before evaluating."""
    if _distributed():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


# ---------------------------------------------------------------- state and checkpoints
@dataclass
class RunState:
    epoch: int = 0  # epochs completed == index of the epoch in progress
    batch_in_epoch: int = 0  # batches done in the epoch in progress
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss*n, correct, n
    last_checkpoint: str | None = None
    last_checkpoint_step: int = -1


@dataclass
class Trainer:
    cfg: Config
    topo: Topology
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    steps_per_epoch: int
    state: RunState

    def save(self, sums: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> str:
        """Collective: gather RNG states, rank 0 writes atomically; returns the path."""
        if sums is not None:
            self.state.partial = [float(sums[0].item()), float(sums[1].item()), float(sums[2])]
        rng = capture_rng()
        if _distributed():
            gathered: list[Any] | None = (
                [None] * self.topo.world_size if self.topo.is_main else None
            )
            dist.gather_object(rng, gathered, dst=0)
            rng_states = gathered
        else:
            rng_states = [rng]
        s = self.state

        def write() -> str:
            payload = {
                "format_version": FORMAT_VERSION,
                "model_name": self.cfg.model,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "epoch": s.epoch,
                "batch_in_epoch": s.batch_in_epoch,
                "global_step": s.global_step,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.topo.world_size,
                "train_partial": list(s.partial),
                "history": list(s.history),
                "rng_states": rng_states,
                "config": self.cfg.to_dict(),
                "torch_version": str(torch.__version__),
                "saved_at": time.time(),
            }
            return str(save_checkpoint(self.cfg.checkpoint_dir, payload, self.cfg.keep_checkpoints))

        path = _on_main(self.topo, write)
        s.last_checkpoint, s.last_checkpoint_step = path, s.global_step
        log.info("Checkpoint saved: %s", path)
        return path

    def restore(self, path: str, lr: float) -> None:
        payload = load_checkpoint(path)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        # the lr scaling rule is re-applied for the current world size / batch
        self.scheduler.base_lrs = [lr for _ in self.optimizer.param_groups]
        for group, factor in zip(
            self.optimizer.param_groups,
            [f(self.scheduler.last_epoch) for f in self.scheduler.lr_lambdas],
            strict=True,
        ):
            group["initial_lr"], group["lr"] = lr, lr * factor
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        s = self.state
        s.epoch, s.batch_in_epoch = int(payload["epoch"]), int(payload["batch_in_epoch"])
        s.global_step = int(payload["global_step"])
        s.history = list(payload.get("history", []))
        s.partial = list(payload.get("train_partial", [0.0, 0.0, 0.0]))
        s.last_checkpoint, s.last_checkpoint_step = path, s.global_step
        if s.batch_in_epoch and payload.get("steps_per_epoch") != self.steps_per_epoch:
            log.warning(
                "Steps per epoch changed (%s -> %d, batch size or world size changed): "
                "restarting epoch %d from its first batch",
                payload.get("steps_per_epoch"),
                self.steps_per_epoch,
                s.epoch,
            )
            s.batch_in_epoch, s.partial = 0, [0.0, 0.0, 0.0]
        states = payload["rng_states"]
        same_world = len(states) == self.topo.world_size
        restore_rng(states[self.topo.rank] if same_world else states[0])


def _prepare_output_dirs(cfg: Config) -> None:
    for path in (cfg.output_dir, cfg.checkpoint_dir):
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            probe = Path(path) / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise SetupError(
                f"cannot write to {path} ({exc.strerror}): set output_dir=/a/writable/shared/dir "
                "(and checkpoint_dir if you set it), on a filesystem every node sees"
            ) from exc


def _choose_resume(cfg: Config) -> str | None:
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


# ---------------------------------------------------------------- the run
def run(cfg: Config | Mapping[str, Any], handle_signals: bool = True) -> dict[str, Any]:
    """Train according to ``cfg`` in this process (one rank). Returns the result dict.

    ``handle_signals=False`` leaves the preemption signal alone (submitit installs its own
    handler and calls a Checkpointable); periodic checkpoints still happen.
    """
    if not isinstance(cfg, Config):
        cfg = Config.from_dict(cfg)
    cfg = resolve_paths(cfg)
    topo = topology_from_env()
    validate_topology(topo)
    _setup_logging(topo.rank)
    device = select_device(topo)
    _set_cpu_threads(cfg, topo, device)
    check_every = cfg.signal_check_every or (20 if device.type == "cuda" else 1)
    signum = None if cfg.preempt_signal.lower() == "none" else signal_from_name(cfg.preempt_signal)
    flag = PreemptionFlag(signum, check_every, device)
    if handle_signals:
        flag.install()
    try:
        backend = init_distributed(topo, device, cfg.backend, cfg.dist_timeout_s)
        result = _train(cfg, topo, device, backend, flag)
        if _distributed():
            # Leave together: a rank that exits first (e.g. 75 after a preemption) would make
            # `srun --kill-on-bad-exit` kill rank 0 while it still writes the plot and summary.
            dist.barrier()
        return result
    finally:
        flag.uninstall()
        cleanup_distributed()


def _train(
    cfg: Config, topo: Topology, device: torch.device, backend: str, flag: PreemptionFlag
) -> dict[str, Any]:
    t_start = time.time()
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls (cuDNN: default on)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision) if cuda else None
    channels_last = cfg.channels_last

    # Fail before any work if the run cannot keep its results.
    _on_main(topo, lambda: _prepare_output_dirs(cfg))

    # data: rank 0 stages it (download / extract / generate) while the others wait, on a
    # CPU group whose timeout allows for a slow download
    slow_group = None
    if _distributed():
        slow_group = dist.new_group(
            backend="gloo",
            timeout=datetime.timedelta(seconds=max(cfg.dist_timeout_s, DATA_STAGING_TIMEOUT_S)),
        )
    _on_main(
        topo,
        lambda: str(
            prepare_dataset(
                cfg.dataset,
                cfg.data_dir,
                cfg.download,
                cfg.synthetic_train,
                cfg.synthetic_val,
                cfg.synthetic_seed,
            )
        ),
        group=slow_group,
    )
    error = ""
    try:
        data = read_cifar_dir(dataset_dir(cfg.dataset, cfg.data_dir))
    except Exception as exc:
        error = f"rank {topo.rank}: {exc} (is data_dir on storage shared by all nodes?)"
    if not _all_ok(not error, device):
        raise SetupError(error or "another rank could not read the dataset")

    _seed_everything(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg.model, num_classes=len(data.classes)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    train_loader, val_loader = build_loaders(
        data,
        loader=cfg.loader,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        rank=topo.rank,
        world=topo.world_size,
        device=device,
        seed=cfg.seed,
        augment=cfg.augment,
        num_workers=cfg.num_workers,
        channels_last=channels_last,
        max_batches=cfg.max_steps_per_epoch,
    )
    steps_per_epoch = len(train_loader)
    global_batch = cfg.batch_size * topo.world_size
    lr = cfg.lr * global_batch / cfg.lr_reference_batch if cfg.lr_scaling == "linear" else cfg.lr
    optimizer = build_optimizer(model, cfg, lr, device)
    scheduler, warmup_steps, total_steps = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if cuda and cfg.precision == "fp16" else None
    tr = Trainer(
        cfg, topo, device, model, optimizer, scheduler, scaler, steps_per_epoch, RunState()
    )

    resume_path = _on_main(topo, lambda: _choose_resume(cfg))
    if resume_path:
        error = ""
        try:
            tr.restore(resume_path, lr)
        except Exception as exc:
            error = f"rank {topo.rank}: cannot load {resume_path}: {exc}"
        if not _all_ok(not error, device):
            raise SetupError(error or f"another rank could not load {resume_path}")
    state = tr.state

    ddp: nn.Module = model
    if topo.is_distributed:
        ddp = DDP(
            model,
            device_ids=[device.index] if cuda else None,
            gradient_as_bucket_view=True,
            bucket_cap_mb=cfg.ddp_bucket_cap_mb,
        )
    train_model: Callable[..., torch.Tensor] = torch.compile(ddp) if cfg.compile else ddp
    eval_model: Callable[..., torch.Tensor] = torch.compile(model) if cfg.compile else model
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    metrics = MetricsWriter(Path(cfg.output_dir) / "metrics.jsonl", enabled=topo.is_main)
    if resume_path:
        metrics.truncate_after(state.global_step)
    _print_header(
        cfg,
        topo,
        backend,
        device,
        model,
        data,
        steps_per_epoch,
        total_steps,
        warmup_steps,
        lr,
        amp_dtype,
        flag,
        resume_path,
        state,
    )
    metrics.log(
        {
            "kind": "start",
            "step": state.global_step,
            "epoch": state.epoch,
            "world_size": topo.world_size,
            "global_batch": global_batch,
            "lr": lr,
            "restart_count": topo.restart_count,
            "resumed_from": resume_path,
            "backend": backend,
            "device": str(device),
        }
    )

    preempted = False
    for epoch in range(state.epoch, cfg.epochs):
        train_loader.set_epoch(epoch)
        start = state.batch_in_epoch
        loss_sum = torch.tensor(state.partial[0], dtype=torch.float64, device=device)
        correct = torch.tensor(state.partial[1], dtype=torch.float64, device=device)
        count = int(state.partial[2])
        t_epoch = t_int = time.perf_counter()
        n_int = 0
        for i, (x, y) in enumerate(train_loader.iter_from(start), start=start):
            loss, n_correct = train_step(
                train_model, x, y, criterion, optimizer, scheduler, scaler, amp_dtype
            )
            loss_sum += loss.double() * y.shape[0]
            correct += n_correct
            count += y.shape[0]
            n_int += y.shape[0]
            state.global_step += 1
            state.batch_in_epoch = i + 1
            if (i + 1) % cfg.log_every == 0:
                elapsed = time.perf_counter() - t_int
                _log_interval(
                    metrics,
                    epoch,
                    i + 1,
                    state.global_step,
                    loss_sum,
                    correct,
                    count,
                    n_int * topo.world_size / max(elapsed, 1e-9),
                    optimizer,
                )
                t_int, n_int = time.perf_counter(), 0
            if (
                cfg.checkpoint_every_steps
                and state.global_step % cfg.checkpoint_every_steps == 0
                and i + 1 < steps_per_epoch
            ):
                tr.save((loss_sum, correct, count))
            if flag.check(state.global_step):
                preempted = True
                break
        if preempted:
            if state.last_checkpoint_step != state.global_step:
                tr.save((loss_sum, correct, count))
            break

        # end of epoch: validation over the whole set (metrics summed across ranks)
        record = _epoch_record(
            epoch,
            state.global_step,
            (loss_sum, correct, count),
            model,
            eval_model,
            val_loader,
            len(data.val_y),
            device,
            amp_dtype,
            (steps_per_epoch - start) * global_batch,
            t_epoch,
            optimizer,
        )
        val_acc, val_loss = record["val_acc"], record["val_loss"]
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
        metrics.log(record)
        state.history.append(record)
        state.epoch, state.batch_in_epoch, state.partial = epoch + 1, 0, [0.0, 0.0, 0.0]
        tr.save()
        if epoch + 1 < cfg.epochs and flag.check(state.global_step, force=True):
            preempted = True
            break

    if preempted:
        return _finish_preempted(cfg, topo, state, metrics, global_batch, lr, t_start, resume_path)
    return _finish(cfg, topo, state, metrics, global_batch, lr, t_start, resume_path)


def _epoch_record(
    epoch: int,
    step: int,
    sums: tuple[torch.Tensor, torch.Tensor, int],
    model: nn.Module,
    eval_model: Any,
    val_loader: Any,
    n_val: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    images: int,
    t_epoch: float,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """All-reduce the epoch's training sums, validate, and build the metrics record."""
    totals = torch.stack(
        [sums[0], sums[1], torch.tensor(float(sums[2]), dtype=torch.float64, device=device)]
    )
    if _distributed():
        dist.all_reduce(totals)
    tr_loss_sum, tr_correct, tr_count = totals.tolist()  # host sync: the epoch's work is done
    train_time = time.perf_counter() - t_epoch
    _sync_buffers(model)
    val_loss, val_acc, val_count = evaluate(eval_model, val_loader, device, amp_dtype)
    if val_count != n_val:
        raise RuntimeError(f"validation counted {val_count} samples, expected {n_val}")
    return {
        "kind": "epoch",
        "epoch": epoch,
        "step": step,
        "train_loss": tr_loss_sum / max(tr_count, 1),
        "train_acc": 100.0 * tr_correct / max(tr_count, 1),
        "val_loss": val_loss,
        "val_acc": val_acc,
        "val_count": val_count,
        "epoch_time_s": time.perf_counter() - t_epoch,
        "img_per_s": images / max(train_time, 1e-9),
        "lr": optimizer.param_groups[0]["lr"],
        **host_stats(),
    }


def _log_interval(
    metrics: MetricsWriter,
    epoch: int,
    batch: int,
    step: int,
    loss_sum: torch.Tensor,
    correct: torch.Tensor,
    count: int,
    img_s: float,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Running epoch loss/accuracy summed over ranks: the only host sync on the step path."""
    t = torch.stack(
        [loss_sum, correct, torch.tensor(float(count), dtype=torch.float64, device=loss_sum.device)]
    )
    if _distributed():
        dist.all_reduce(t)
    ls, c, n = t.tolist()
    lr = optimizer.param_groups[0]["lr"]
    log.info(
        "Epoch: %d, Batch: %d, Loss: %.4f, Acc: %.2f%%, %.0f img/s, lr %.5f",
        epoch,
        batch,
        ls / n,
        100.0 * c / n,
        img_s,
        lr,
    )
    metrics.log(
        {
            "kind": "train",
            "epoch": epoch,
            "batch": batch,
            "step": step,
            "loss": ls / n,
            "acc": 100.0 * c / n,
            "img_per_s": img_s,
            "lr": lr,
        }
    )


def _print_header(
    cfg: Config,
    topo: Topology,
    backend: str,
    device: torch.device,
    model: nn.Module,
    data: Any,
    steps_per_epoch: int,
    total_steps: int,
    warmup_steps: int,
    lr: float,
    amp_dtype: torch.dtype | None,
    flag: PreemptionFlag,
    resume_path: str | None,
    state: RunState,
) -> None:
    if not topo.is_main:
        return
    gb = cfg.batch_size * topo.world_size
    scaling = (
        f"lr {cfg.lr:g} @ global batch {cfg.lr_reference_batch} -> {lr:g} "
        f"(linear scaling x{gb / cfg.lr_reference_batch:g})"
        if cfg.lr_scaling == "linear"
        else f"lr {lr:g} (no scaling)"
    )
    opt = (
        f"sgd momentum={cfg.momentum:g} nesterov={cfg.nesterov}"
        if cfg.optimizer == "sgd"
        else f"adamw betas=({cfg.adam_beta1:g}, {cfg.adam_beta2:g})"
    )
    sig = (
        f"{flag.signum.name} checked every {flag.check_every} step(s)"
        if flag.signum is not None and flag.installed
        else "not handled by the trainer"
    )
    log.info("slurmlab trainer | torch %s | python %s", torch.__version__, sys.version.split()[0])
    log.info(
        "Topology: launcher=%s rank=%d world_size=%d local_world_size=%d nodes=%s master=%s:%d",
        topo.launcher,
        topo.rank,
        topo.world_size,
        topo.local_world_size,
        topo.num_nodes or "n/a",
        topo.master_addr,
        topo.master_port,
    )
    log.info(
        "Device: %s, backend=%s, precision=%s, channels_last=%s, compile=%s, cpu_threads=%d",
        device,
        backend,
        str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        cfg.channels_last,
        cfg.compile,
        torch.get_num_threads(),
    )
    log.info(
        "Model: %s (%.2fM params); data: %s from %s (%d train / %d val), loader=%s, augment=%s",
        cfg.model,
        count_parameters(model) / 1e6,
        cfg.dataset,
        dataset_dir(cfg.dataset, cfg.data_dir),
        len(data.train_y),
        len(data.val_y),
        cfg.loader,
        cfg.augment,
    )
    log.info(
        "Batch: %d/rank x %d ranks = global batch %d; %s",
        cfg.batch_size,
        topo.world_size,
        gb,
        scaling,
    )
    log.info(
        "Optimizer: %s, weight_decay=%g%s, label_smoothing=%g; schedule=%s, warm-up %d "
        "steps, %d steps/epoch x %d epochs = %d steps",
        opt,
        cfg.weight_decay,
        "" if cfg.decay_norm_and_bias else " (not on BN/bias)",
        cfg.label_smoothing,
        cfg.schedule,
        warmup_steps,
        steps_per_epoch,
        cfg.epochs,
        total_steps,
    )
    log.info(
        "Output: %s; checkpoints: %s (keep %s, every epoch%s)",
        cfg.output_dir,
        cfg.checkpoint_dir,
        cfg.keep_checkpoints or "all",
        f" and every {cfg.checkpoint_every_steps} steps" if cfg.checkpoint_every_steps else "",
    )
    log.info(
        "Preemption: %s; restart %d, max_requeues=%d, requeue id %s",
        sig,
        topo.restart_count,
        cfg.max_requeues,
        topo.requeue_id,
    )
    if resume_path:
        log.info(
            "Resumed from %s (epoch %d, batch %d, step %d)",
            resume_path,
            state.epoch,
            state.batch_in_epoch,
            state.global_step,
        )


def _result(
    cfg: Config,
    topo: Topology,
    state: RunState,
    global_batch: int,
    lr: float,
    t_start: float,
    resume_path: str | None,
    status: str,
    exit_code: int,
    requeued: bool,
) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    return {
        "status": status,
        "exit_code": exit_code,
        "requeued": requeued,
        "epochs_completed": state.epoch,
        "epochs": cfg.epochs,
        "global_step": state.global_step,
        "val_acc": last.get("val_acc"),
        "val_loss": last.get("val_loss"),
        "train_acc": last.get("train_acc"),
        "train_loss": last.get("train_loss"),
        "best_val_acc": max((h["val_acc"] for h in state.history), default=None),
        "world_size": topo.world_size,
        "global_batch": global_batch,
        "lr_effective": lr,
        "checkpoint": state.last_checkpoint,
        "resumed_from": resume_path,
        "output_dir": cfg.output_dir,
        "metrics_path": str(Path(cfg.output_dir) / "metrics.jsonl"),
        "elapsed_s": time.time() - t_start,
    }


def _write_plot(cfg: Config, topo: Topology) -> None:
    if not (cfg.plot and topo.is_main):
        return
    try:
        from trainer.plot import plot_run

        log.info("Curves: %s", plot_run(cfg.output_dir))
    except Exception as exc:
        log.warning("could not write curves.png: %s", exc)


def _finish(
    cfg: Config,
    topo: Topology,
    state: RunState,
    metrics: MetricsWriter,
    global_batch: int,
    lr: float,
    t_start: float,
    resume_path: str | None,
) -> dict[str, Any]:
    res = _result(cfg, topo, state, global_batch, lr, t_start, resume_path, "completed", 0, False)
    metrics.log(
        {
            "kind": "final",
            "step": state.global_step,
            **{k: res[k] for k in ("epochs_completed", "val_acc", "best_val_acc")},
        }
    )
    _write_plot(cfg, topo)
    va = res["val_acc"]
    log.info(
        "Final: epoch=%d val_acc=%s best_val_acc=%s world_size=%d global_batch=%d "
        "steps=%d time=%.1fs checkpoint=%s",
        state.epoch,
        f"{va:.2f}%" if va is not None else "n/a",
        f"{res['best_val_acc']:.2f}%" if res["best_val_acc"] is not None else "n/a",
        topo.world_size,
        global_batch,
        state.global_step,
        res["elapsed_s"],
        state.last_checkpoint,
    )
    return res


def _finish_preempted(
    cfg: Config,
    topo: Topology,
    state: RunState,
    metrics: MetricsWriter,
    global_batch: int,
    lr: float,
    t_start: float,
    resume_path: str | None,
) -> dict[str, Any]:
    def decide() -> tuple[bool, int, str]:
        r: RequeueResult = requeue(topo.requeue_id, topo.restart_count, cfg.max_requeues)
        return r.requeued, r.exit_code, r.message

    log.info(
        "Preemption signal received: stopped at epoch %d batch %d (step %d), checkpoint %s",
        state.epoch,
        state.batch_in_epoch,
        state.global_step,
        state.last_checkpoint,
    )
    requeued, code, message = _on_main(topo, decide)
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
    _write_plot(cfg, topo)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return _result(
        cfg, topo, state, global_batch, lr, t_start, resume_path, "preempted", code, requeued
    )


__all__ += ["EXIT_PREEMPTED", "SetupError", "evaluate"]
