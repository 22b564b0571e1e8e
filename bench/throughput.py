"""Benchmark 1: trainer throughput, the slurmlab fast path vs a seed-style baseline, side by side.

fast path  the trainer's own pieces: ``DeviceLoader`` (uint8 dataset on the device, batched
           on-device crop + flip), ``build_model``, ``build_optimizer`` (fused SGD on CUDA),
           ``build_scheduler``, ``train_step``; on CUDA channels_last + bf16 autocast, cuDNN
           benchmark and TF32 matmuls, exactly as ``trainer.train._train`` sets them up.
baseline   what a naive project writes: a torchvision ``CIFAR10``-style Dataset over the same
           ``cifar-10-batches-py`` files (PIL image per sample), per-sample transforms
           RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize in a DataLoader with
           workers, fp32, NCHW, torch defaults (no cuDNN benchmark), plain SGD, ``loss.item()``
           every step for the running loss.

Both train the same registry model with the same batch on the same device for the same number of
timed steps after the same warm-up. Data wait = time the step loop is blocked getting the next
batch (on CUDA: the GPU-side gap between the end of the previous step and the batch being ready,
from CUDA events, so asynchronous overlap is credited) / total time.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bench.common import (
    Check,
    FlopCount,
    Peak,
    PeakRss,
    count_flops,
    fmt_si,
    format_checks,
    format_table,
    sync,
)
from trainer.config import Config, load_config

Batch = tuple[torch.Tensor, torch.Tensor]
TARGET_SPEEDUP = {"cpu": 1.5, "cuda": 5.0}
TARGET_DATA_WAIT = 0.05
TARGET_MFU = 0.25


# ---------------------------------------------------------------- the seed-style baseline
class SeedCIFAR10(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """torchvision.datasets.CIFAR10, minus download and md5 checks (the synthetic files have
    their own checksums): pickled batches -> one HWC uint8 array, PIL image per sample."""

    train_list: ClassVar[list[str]] = [f"data_batch_{i}" for i in range(1, 6)]
    test_list: ClassVar[list[str]] = ["test_batch"]

    def __init__(
        self, batch_dir: str | os.PathLike[str], train: bool = True, transform: Any = None
    ) -> None:
        self.transform = transform
        data: list[np.ndarray] = []
        self.targets: list[int] = []
        for name in self.train_list if train else self.test_list:
            with open(Path(batch_dir) / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data.append(entry["data"])
            self.targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        img, target = Image.fromarray(self.data[index]), self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def seed_transform() -> Any:
    from torchvision import transforms

    from trainer.data import MEAN, STD

    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def seed_pipeline_cost(batch_dir: Path, n: int = 256) -> float:
    """Seconds of one core per image for the baseline's per-sample transform pipeline."""
    dataset = SeedCIFAR10(batch_dir, train=True, transform=seed_transform())
    n = min(n, len(dataset))
    dataset[0]
    t = time.perf_counter()
    for i in range(n):
        dataset[i]
    return (time.perf_counter() - t) / n


# ---------------------------------------------------------------- measurement
@dataclass
class PathResult:
    model: str
    path: str  # "fast" | "baseline"
    batch: int
    steps: int
    img_s: float
    step_ms: float
    data_wait: float  # fraction of the timed wall time
    peak_mem_bytes: int
    mem_kind: str  # "cuda max allocated" | "RSS peak (process + workers)"
    setup: str  # precision / memory format / loader, for the table
    mfu: float = float("nan")

    @classmethod
    def from_timing(
        cls,
        model: str,
        path: str,
        batch: int,
        steps: int,
        total_s: float,
        data_s: float,
        mem: dict[str, Any],
        setup: str,
    ) -> PathResult:
        """The rates of one timed loop: ``steps`` batches in ``total_s``, ``data_s`` waiting."""
        return cls(
            model=model,
            path=path,
            batch=batch,
            steps=steps,
            img_s=batch * steps / total_s,
            step_ms=1000 * total_s / steps,
            data_wait=data_s / total_s,
            peak_mem_bytes=mem["peak"],
            mem_kind=mem["kind"],
            setup=setup,
        )


def _forever(make_iter: Callable[[int], Iterator[Batch]]) -> Iterator[Batch]:
    """Batches across epochs (epoch restarts are part of the measured data time)."""
    epoch = 0
    while True:
        yield from make_iter(epoch)
        epoch += 1


def timed_loop(
    next_batch: Callable[[], Batch],
    step: Callable[[torch.Tensor, torch.Tensor], None],
    device: torch.device,
    warmup: int,
    steps: int,
) -> tuple[float, float]:
    """(wall seconds of ``steps`` steps, seconds of those spent waiting for data)."""
    for _ in range(warmup):
        step(*next_batch())
    sync(device)
    cuda = device.type == "cuda"
    marks: list[tuple[Any, Any]] = []
    data_s = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        if cuda:
            begin, ready = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
            begin.record()
            x, y = next_batch()
            ready.record()
            marks.append((begin, ready))
        else:
            td = time.perf_counter()
            x, y = next_batch()
            data_s += time.perf_counter() - td
        step(x, y)
    sync(device)
    total = time.perf_counter() - t0
    if cuda:
        data_s = sum(b.elapsed_time(r) for b, r in marks) / 1000.0
    return total, data_s


@contextlib.contextmanager
def _measure_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    box: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        yield box
        box["peak"], box["kind"] = torch.cuda.max_memory_allocated(device), "cuda max allocated"
    else:
        with PeakRss() as rss:
            yield box
        box["peak"], box["kind"] = (
            rss.peak,
            "RSS peak of the process + its workers (shared pages once per process)",
        )


@contextlib.contextmanager
def _backend_flags(cudnn_benchmark: bool, matmul_precision: str) -> Iterator[None]:
    old = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.set_float32_matmul_precision(matmul_precision)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old[0]
        torch.set_float32_matmul_precision(old[1])


def _cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Compute:
    """One path's model and training step, apart from its input pipeline."""

    model: nn.Module
    step: Callable[[torch.Tensor, torch.Tensor], Any]  # (x, y) -> whatever the loop tallies
    memory_format: torch.memory_format
    setup: str  # precision and memory format, for the tables


def fast_config(model_name: str, batch: int, compile_model: bool = False) -> Config:
    return load_config(
        None, [f"model={model_name}", f"batch_size={batch}", f"compile={compile_model}"]
    )


def fast_compute(cfg: Config, device: torch.device, steps_per_epoch: int) -> Compute:
    """The trainer's model, optimizer, lr schedule and train_step, built as trainer.train._train
    builds them for one process. The step returns (loss, n correct) on the device."""
    from trainer.models import build_model
    from trainer.train import build_optimizer, build_scheduler, train_step

    cuda = device.type == "cuda"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision) if cuda else None
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=10).to(device, memory_format=fmt)
    lr = cfg.lr * cfg.batch_size / cfg.lr_reference_batch
    optimizer = build_optimizer(model, cfg, lr, device)
    scheduler, _, _ = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if cuda and cfg.precision == "fp16" else None
    train_model: Any = torch.compile(model) if cfg.compile else model
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return train_step(train_model, x, y, criterion, optimizer, scheduler, scaler, amp_dtype)

    setup = (
        f"{str(amp_dtype).replace('torch.', '') if amp_dtype else 'fp32'}, "
        f"{'NHWC' if cfg.channels_last else 'NCHW'}" + (", compiled" if cfg.compile else "")
    )
    return Compute(model, step, fmt, setup)


def seed_compute(model_name: str, device: torch.device) -> Compute:
    """The seed project's model and step: fp32, NCHW, plain SGD, loss.item() every step."""
    from trainer.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> float:
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    return Compute(model, step, torch.contiguous_format, "fp32, NCHW")


def run_fast(
    model_name: str,
    batch_dir: Path,
    device: torch.device,
    batch: int,
    warmup: int,
    steps: int,
    compile_model: bool = False,
) -> PathResult:
    """The trainer's fast path, set up as trainer.train._train does for one process."""
    from trainer.data import DeviceLoader, read_cifar_dir

    cfg = fast_config(model_name, batch, compile_model)
    cuda = device.type == "cuda"
    with (
        _backend_flags(cudnn_benchmark=cuda, matmul_precision="high" if cuda else "highest"),
        _measure_memory(device) as mem,
    ):
        data = read_cifar_dir(batch_dir)
        loader = DeviceLoader(
            data.train_x,
            data.train_y,
            batch_size=batch,
            rank=0,
            world=1,
            device=device,
            seed=cfg.seed,
            train=True,
            augment=True,
            channels_last=cfg.channels_last,
        )
        compute = fast_compute(cfg, device, len(loader))
        # the trainer's per-step bookkeeping: device-side sums, no host sync
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)

        def make_iter(epoch: int) -> Iterator[Batch]:
            loader.set_epoch(epoch)
            return iter(loader)

        batches = _forever(make_iter)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            nonlocal loss_sum, correct
            loss, n_correct = compute.step(x, y)
            loss_sum += loss.double() * y.shape[0]
            correct += n_correct

        total, data_s = timed_loop(lambda: next(batches), step, device, warmup, steps)
        float(loss_sum.item())  # the trainer reads these every log_every steps
        batches.close()
    setup = compute.setup + ", on-device loader"
    return PathResult.from_timing(model_name, "fast", batch, steps, total, data_s, mem, setup)


def run_baseline(
    model_name: str,
    batch_dir: Path,
    device: torch.device,
    batch: int,
    warmup: int,
    steps: int,
    workers: int,
) -> PathResult:
    """The seed-style loop: per-sample PIL transforms in DataLoader workers, fp32, NCHW."""
    cuda = device.type == "cuda"
    with (
        _backend_flags(cudnn_benchmark=False, matmul_precision="highest"),
        _measure_memory(device) as mem,
    ):
        dataset = SeedCIFAR10(batch_dir, train=True, transform=seed_transform())
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            pin_memory=cuda,
            drop_last=True,
        )
        compute = seed_compute(model_name, device)
        running_loss = 0.0
        batches = _forever(lambda _epoch: iter(loader))

        def next_batch() -> Batch:
            inputs, labels = next(batches)
            return inputs.to(device), labels.to(device)

        def step(inputs: torch.Tensor, labels: torch.Tensor) -> None:
            nonlocal running_loss
            running_loss += compute.step(inputs, labels)

        total, data_s = timed_loop(next_batch, step, device, warmup, steps)
        batches.close()  # stops the workers inside the memory window
    setup = f"{compute.setup}, DataLoader + PIL, {workers} workers"
    return PathResult.from_timing(model_name, "baseline", batch, steps, total, data_s, mem, setup)


# ---------------------------------------------------------------- the benchmark
@dataclass
class ModelPlan:
    model: str
    batch: int
    warmup: int
    steps: int


def run_throughput(
    plans: list[ModelPlan],
    batch_dir: Path,
    device: torch.device,
    peak: Peak,
    workers: int,
    compile_model: bool = False,
    rounds: int = 1,
) -> dict[str, Any]:
    """Run every model's two paths, print the table and the checks; returns a JSON-able dict.

    With ``rounds`` > 1 the paths alternate (fast, baseline, fast, baseline, ...) and each path
    keeps its best round (highest img/s; peak memory is the largest seen): on a shared host the
    best round is the one least disturbed by other processes, and alternating exposes both paths
    to the same drift in load.
    """
    from trainer.models import build_model

    rows: list[list[Any]] = []
    results: list[PathResult] = []
    flops: dict[str, FlopCount] = {}
    for plan in plans:
        torch.manual_seed(0)
        flops[plan.model] = count_flops(build_model(plan.model).to(device), device)
        best: dict[str, PathResult] = {}
        for _ in range(rounds):
            fast = run_fast(
                plan.model, batch_dir, device, plan.batch, plan.warmup, plan.steps, compile_model
            )
            _cleanup(device)
            base = run_baseline(
                plan.model, batch_dir, device, plan.batch, plan.warmup, plan.steps, workers
            )
            _cleanup(device)
            for r in (fast, base):
                old = best.get(r.path)
                if old is not None:
                    r.peak_mem_bytes = max(r.peak_mem_bytes, old.peak_mem_bytes)
                if old is None or r.img_s > old.img_s:
                    best[r.path] = r
        for r in (best["fast"], best["baseline"]):
            r.mfu = r.img_s * flops[plan.model].train / peak.flops
            results.append(r)
            rows.append(
                [
                    r.model,
                    r.path,
                    r.batch,
                    f"{r.img_s:,.1f}",
                    f"{r.step_ms:.1f}",
                    f"{100 * r.data_wait:.1f}%",
                    f"{r.peak_mem_bytes / 2**20:,.0f}",
                    f"{100 * r.mfu:.2f}%",
                    r.setup,
                ]
            )

    print(
        format_table(
            ["model", "path", "batch", "img/s", "step ms", "data wait", "peak MiB", "MFU", "setup"],
            rows,
            title=f"Throughput on {device.type}: best of {rounds} alternating round(s), "
            f"warm-up {plans[0].warmup if plans else 0} steps, then "
            f"{', '.join(f'{p.model} {p.steps}' for p in plans)} timed steps; peak MiB = "
            f"{results[0].mem_kind if results else ''}",
        )
    )
    print(f"MFU denominator: {fmt_si(peak.flops, 'FLOP/s')} = {peak.label}")
    print(
        "FLOPs per training image (FlopCounterMode: conv + matmul only, 1 multiply-add = 2 FLOPs):"
    )
    for name, fc in flops.items():
        print(
            f"  {name}: forward {fmt_si(fc.forward, 'FLOP')}, forward+backward "
            f"{fmt_si(fc.train, 'FLOP')} ({fc.train / fc.forward:.2f}x forward)"
        )
    pipeline_s = seed_pipeline_cost(batch_dir)
    print(
        f"seed-style per-sample pipeline (PIL RandomCrop+Flip+ToTensor+Normalize): "
        f"{1e6 * pipeline_s:.0f} us/image on one core"
    )

    checks: list[Check] = []
    speedups: dict[str, float] = {}
    target = TARGET_SPEEDUP["cuda" if device.type == "cuda" else "cpu"]
    for plan in plans:
        fast, base = (
            next(r for r in results if r.model == plan.model and r.path == p)
            for p in ("fast", "baseline")
        )
        speedups[plan.model] = fast.img_s / base.img_s
        if device.type == "cpu":
            # Both paths run the same fp32 NCHW model on the same cores; what the fast path
            # removes is the per-sample work. Its share at the fast path's rate bounds the gain.
            share = pipeline_s * fast.img_s / torch.get_num_threads()
            print(
                f"{plan.model}: at {fast.img_s:,.1f} img/s the per-sample pipeline would take "
                f"{100 * share:.1f}% of {torch.get_num_threads()} cores, so removing it can "
                f"speed CPU training up by about {1 + share:.2f}x at most"
            )
        print(
            f"{plan.model}: fast {fast.img_s:,.1f} img/s vs baseline {base.img_s:,.1f} img/s "
            f"= {speedups[plan.model]:.2f}x (batch {plan.batch})"
        )
        checks.append(
            Check(
                f"fast/baseline img/s, {plan.model}, batch {plan.batch}, {device.type}",
                speedups[plan.model],
                target,
                unit="x",
            )
        )
        checks.append(
            Check(
                f"fast-path data wait, {plan.model}",
                100 * fast.data_wait,
                100 * TARGET_DATA_WAIT,
                higher_is_better=False,
                unit="%",
            )
        )
    rn50 = next((r for r in results if r.model == "resnet50" and r.path == "fast"), None)
    if device.type != "cuda":
        checks.append(
            Check(
                "ResNet50 MFU >= 25% (H100, bf16)",
                None,
                None,
                note="n/a (GPU target); CPU MFU vs the measured GEMM peak is in the table",
            )
        )
    elif rn50 is None:
        checks.append(Check("ResNet50 MFU (H100, bf16)", None, None, note="resnet50 not run"))
    else:
        checks.append(
            Check(
                f"ResNet50 MFU, bf16, batch {rn50.batch}, {torch.cuda.get_device_name(device)}",
                100 * rn50.mfu,
                100 * TARGET_MFU,
                unit="%",
            )
        )
    print(format_checks(checks))
    return {
        "device": str(device),
        "peak_flops": peak.flops,
        "peak_label": peak.label,
        "flops_per_image": {k: asdict(v) for k, v in flops.items()},
        "results": [asdict(r) for r in results],
        "speedups": speedups,
        "checks": [c.to_dict() for c in checks],
    }
