"""Everything one rank trains with, built from the config in one place: :func:`build_training`.

It returns a :class:`Training`; the loop (trainer/loop.py), checkpoints (trainer/run_state.py)
and reporting (trainer/report.py) receive that object, never the raw config alone. The
benchmarks build through :func:`assemble` too, so they measure exactly what the trainer runs.

Order matters: fail before any work if the run cannot keep its results (output directories),
stage the data on rank 0 while the others wait, then seed, build the model, loaders, optimizer,
schedule, and wrap the model for DDP and torch.compile.
"""

from __future__ import annotations

import datetime
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer.config import Config
from trainer.data import ArrayDataset, dataset_dir, prepare_dataset, read_cifar_dir
from trainer.distributed import SetupError, all_ok, in_process_group, on_main
from trainer.loaders import build_loaders
from trainer.models import build_model
from trainer.topology import Topology

DATA_STAGING_TIMEOUT_S = 2 * 3600  # other ranks wait this long for rank 0's download

__all__ = [
    "Training",
    "assemble",
    "build_optimizer",
    "build_scheduler",
    "build_training",
    "configure_device",
    "effective_lr",
    "lr_factor",
]


@dataclass
class Training:
    """One rank's training run: what the loop steps, and the numbers the reports print."""

    cfg: Config
    topo: Topology
    device: torch.device
    backend: str  # "none" for a single process, else "nccl" / "gloo"
    amp_dtype: torch.dtype | None  # autocast dtype; None = fp32 (CPU, or precision fp32)
    data: ArrayDataset
    model: nn.Module  # the bare model: checkpoints, BatchNorm sync
    train_model: Callable[..., torch.Tensor]  # DDP-wrapped when distributed, compiled if asked
    eval_model: Callable[..., torch.Tensor]
    criterion: nn.Module
    train_loader: Any  # DeviceLoader | DataLoaderPath
    val_loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None  # fp16 only
    lr: float  # effective peak learning rate
    global_batch: int
    steps_per_epoch: int
    warmup_steps: int
    total_steps: int


# ---------------------------------------------------------------- learning rate
def effective_lr(cfg: Config, world_size: int) -> float:
    """Peak lr for this world size: ``lr`` is quoted at ``lr_reference_batch`` and scaled
    linearly with the global batch (Goyal et al.) unless ``lr_scaling: none``."""
    if cfg.lr_scaling != "linear":
        return cfg.lr
    return cfg.lr * (cfg.batch_size * world_size) / cfg.lr_reference_batch


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


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LambdaLR, int, int]:
    """The per-step schedule, its warm-up steps and total steps."""
    total = steps_per_epoch * cfg.epochs
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), max(total - 1, 0))

    def factor(step: int) -> float:
        return lr_factor(step, cfg.schedule, warmup, total, cfg.final_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), warmup, total


# ---------------------------------------------------------------- device, outputs, data
def configure_device(cfg: Config, device: torch.device) -> torch.dtype | None:
    """Set the CUDA speed flags; return the autocast dtype (None: fp32, always on CPU)."""
    if device.type != "cuda":
        return None
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls (cuDNN: default on)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)


def prepare_output_dirs(cfg: Config) -> None:
    """Create and write-test the output and checkpoint directories (rank 0)."""
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


def load_data(cfg: Config, topo: Topology, device: torch.device) -> ArrayDataset:
    """Rank 0 stages the dataset (download / extract / generate) while the others wait on a
    CPU group whose timeout allows a slow download; then every rank reads it."""
    slow_group = None
    if in_process_group():
        timeout_s = max(cfg.dist_timeout_s, DATA_STAGING_TIMEOUT_S)
        slow_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    on_main(topo, lambda: str(_stage(cfg)), group=slow_group)
    error = ""
    try:
        data = read_cifar_dir(dataset_dir(cfg.dataset, cfg.data_dir))
    except Exception as exc:
        error = f"rank {topo.rank}: {exc} (is data_dir on storage shared by all nodes?)"
    if not all_ok(not error, device):
        raise SetupError(error or "another rank could not read the dataset")
    return data


def _stage(cfg: Config) -> Path:
    return prepare_dataset(
        cfg.dataset,
        cfg.data_dir,
        cfg.download,
        cfg.synthetic_train,
        cfg.synthetic_val,
        cfg.synthetic_seed,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------- the build
def build_training(cfg: Config, topo: Topology, device: torch.device, backend: str) -> Training:
    """The trainer's path: output directories checked, data staged and read, then assemble."""
    on_main(topo, lambda: prepare_output_dirs(cfg))
    return assemble(cfg, topo, device, backend, load_data(cfg, topo, device))


def assemble(
    cfg: Config, topo: Topology, device: torch.device, backend: str, data: ArrayDataset
) -> Training:
    """Model, loaders, optimizer, schedule and wrappers from in-memory data (no file I/O)."""
    amp_dtype = configure_device(cfg, device)
    seed_everything(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg.model, num_classes=len(data.classes)).to(device)
    if cfg.channels_last:
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
        channels_last=cfg.channels_last,
        max_batches=cfg.max_steps_per_epoch,
    )
    lr = effective_lr(cfg, topo.world_size)
    optimizer = build_optimizer(model, cfg, lr, device)
    scheduler, warmup_steps, total_steps = build_scheduler(optimizer, cfg, len(train_loader))
    ddp: nn.Module = model
    if topo.is_distributed:
        ddp = DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,
            bucket_cap_mb=cfg.ddp_bucket_cap_mb,
        )
    return Training(
        cfg=cfg,
        topo=topo,
        device=device,
        backend=backend,
        amp_dtype=amp_dtype,
        data=data,
        model=model,
        train_model=torch.compile(ddp) if cfg.compile else ddp,
        eval_model=torch.compile(model) if cfg.compile else model,
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        train_loader=train_loader,
        val_loader=val_loader,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None,
        lr=lr,
        global_batch=cfg.batch_size * topo.world_size,
        steps_per_epoch=len(train_loader),
        warmup_steps=warmup_steps,
        total_steps=total_steps,
    )
