"""Benchmark 1: trainer throughput, the slurmlab fast path vs a seed-style baseline, side by side.

This module owns both paths (``fast_compute`` / ``seed_compute`` also serve bench/profile_ops.py),
the timed step loop with its data-wait accounting, and the throughput table and checks.

fast path  the trainer itself for one process: ``trainer.build.assemble`` builds the model, its
           ``DeviceLoader`` (uint8 dataset on the device, batched on-device crop + flip), the
           optimizer (fused SGD on CUDA), lr schedule and precision (on CUDA channels_last + bf16
           autocast, cuDNN benchmark and TF32 matmuls), and every step is
           ``trainer.loop.train_step``.
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
import functools
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
    best_of_rounds,
    count_flops,
    fmt_si,
    forever,
    format_checks,
    format_table,
    sync,
)
from trainer.build import Training, assemble
from trainer.config import load_config
from trainer.data import MEAN, STD, ArrayDataset, read_cifar_dir
from trainer.distributed import topology_from_env
from trainer.loop import train_step
from trainer.models import build_model

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
class ModelPlan:
    model: str
    batch: int
    warmup: int
    steps: int


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
        plan: ModelPlan,
        path: str,
        *,
        total_s: float,
        data_s: float,
        mem: dict[str, Any],
        setup: str,
    ) -> PathResult:
        """The rates of one timed loop: ``plan.steps`` batches in ``total_s``, ``data_s`` of it
        waiting for data."""
        return cls(
            model=plan.model,
            path=path,
            batch=plan.batch,
            steps=plan.steps,
            img_s=plan.batch * plan.steps / total_s,
            step_ms=1000 * total_s / plan.steps,
            data_wait=data_s / total_s,
            peak_mem_bytes=mem["peak"],
            mem_kind=mem["kind"],
            setup=setup,
        )


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
def backend_flags(fast: bool) -> Iterator[None]:
    """torch's global cuDNN / matmul flags for one path, restored afterwards: the fast path gets
    the trainer's (``assemble`` sets them), the seed-style one torch's defaults."""
    old = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    if not fast:
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision("highest")
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
    """One path's training step, apart from its input pipeline."""

    step: Callable[[torch.Tensor, torch.Tensor], Any]  # (x, y) -> whatever the loop tallies
    memory_format: torch.memory_format
    setup: str  # precision and memory format, for the tables


def fast_training(
    model_name: str,
    batch: int,
    device: torch.device,
    data: ArrayDataset,
    *,
    compile_model: bool = False,
) -> Training:
    """What the trainer trains with as a single process (default config), built by the trainer."""
    items = [f"model={model_name}", f"batch_size={batch}", f"compile={compile_model}"]
    return assemble(load_config(None, items), topology_from_env({}), device, "none", data)


def fast_compute(t: Training) -> Compute:
    """The trainer's step on ``t``; it returns (loss, n correct) on the device."""
    cfg, dtype = t.cfg, str(t.amp_dtype).replace("torch.", "") if t.amp_dtype else "fp32"
    setup = f"{dtype}, {'NHWC' if cfg.channels_last else 'NCHW'}"
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    setup += ", compiled" if cfg.compile else ""
    return Compute(functools.partial(train_step, t), fmt, setup)


def seed_compute(model_name: str, device: torch.device) -> Compute:
    """The seed project's model and step: fp32, NCHW, plain SGD, loss.item() every step."""
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

    return Compute(step, torch.contiguous_format, "fp32, NCHW")


def run_fast(
    plan: ModelPlan, batch_dir: Path, device: torch.device, *, compile_model: bool = False
) -> PathResult:
    """The trainer's fast path for one process, as ``assemble`` builds it."""
    with backend_flags(fast=True), _measure_memory(device) as mem:
        data = read_cifar_dir(batch_dir)
        t = fast_training(plan.model, plan.batch, device, data, compile_model=compile_model)
        compute = fast_compute(t)
        # the trainer's per-step bookkeeping: device-side sums, no host sync
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)
        batches = forever(t.train_loader)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            nonlocal loss_sum, correct
            loss, n_correct = compute.step(x, y)
            loss_sum += loss.double() * y.shape[0]
            correct += n_correct

        total, data_s = timed_loop(lambda: next(batches), step, device, plan.warmup, plan.steps)
        float(loss_sum.item())  # the trainer reads these every log_every steps
        batches.close()
    setup = compute.setup + ", on-device loader"
    return PathResult.from_timing(plan, "fast", total_s=total, data_s=data_s, mem=mem, setup=setup)


def run_baseline(
    plan: ModelPlan, batch_dir: Path, device: torch.device, *, workers: int
) -> PathResult:
    """The seed-style loop: per-sample PIL transforms in DataLoader workers, fp32, NCHW."""
    with backend_flags(fast=False), _measure_memory(device) as mem:
        dataset = SeedCIFAR10(batch_dir, train=True, transform=seed_transform())
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=plan.batch,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
        compute = seed_compute(plan.model, device)
        running_loss = 0.0
        batches = forever(loader)

        def next_batch() -> Batch:
            inputs, labels = next(batches)
            return inputs.to(device), labels.to(device)

        def step(inputs: torch.Tensor, labels: torch.Tensor) -> None:
            nonlocal running_loss
            running_loss += compute.step(inputs, labels)

        total, data_s = timed_loop(next_batch, step, device, plan.warmup, plan.steps)
        batches.close()  # stops the workers inside the memory window
    setup = f"{compute.setup}, DataLoader + PIL, {workers} workers"
    return PathResult.from_timing(
        plan, "baseline", total_s=total, data_s=data_s, mem=mem, setup=setup
    )


# ---------------------------------------------------------------- the benchmark
def best_paths(
    plan: ModelPlan,
    batch_dir: Path,
    device: torch.device,
    *,
    workers: int,
    compile_model: bool,
    rounds: int,
) -> tuple[PathResult, PathResult]:
    """(fast, baseline): each path's best of ``rounds`` alternating rounds (highest img/s); peak
    memory is the largest any round saw."""
    peaks: dict[str, int] = {}

    def run(path: str) -> PathResult:
        if path == "fast":
            r = run_fast(plan, batch_dir, device, compile_model=compile_model)
        else:
            r = run_baseline(plan, batch_dir, device, workers=workers)
        _cleanup(device)
        peaks[path] = max(peaks.get(path, 0), r.peak_mem_bytes)
        return r

    best = best_of_rounds(("fast", "baseline"), rounds, run, score=lambda r: r.img_s)
    for path, r in best.items():
        r.peak_mem_bytes = peaks[path]
    return best["fast"], best["baseline"]


def run_throughput(
    plans: list[ModelPlan],
    batch_dir: Path,
    device: torch.device,
    peak: Peak,
    *,
    workers: int,
    compile_model: bool = False,
    rounds: int = 1,
) -> dict[str, Any]:
    """Run every model's two paths, print the table and the checks; returns a JSON-able dict.

    With ``rounds`` > 1 each path keeps its best round (bench.common.best_of_rounds): on a
    shared host the best round is the one least disturbed by other processes, and alternating
    exposes both paths to the same drift in load.
    """
    results: list[PathResult] = []
    flops: dict[str, FlopCount] = {}
    for plan in plans:
        torch.manual_seed(0)
        flops[plan.model] = count_flops(build_model(plan.model).to(device), device)
        pair = best_paths(
            plan, batch_dir, device, workers=workers, compile_model=compile_model, rounds=rounds
        )
        for r in pair:
            r.mfu = r.img_s * flops[plan.model].train / peak.flops
        results += pair
    _print_table(results, plans, device, rounds)
    _print_flops(peak, flops)
    pipeline_s = seed_pipeline_cost(batch_dir)
    print(
        f"seed-style per-sample pipeline (PIL RandomCrop+Flip+ToTensor+Normalize): "
        f"{1e6 * pipeline_s:.0f} us/image on one core"
    )
    speedups, checks = _speedup_checks(plans, results, device, pipeline_s)
    checks.append(_mfu_check(results, device))
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


def _print_table(
    results: list[PathResult], plans: list[ModelPlan], device: torch.device, rounds: int
) -> None:
    rows = [
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
        for r in results
    ]
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


def _print_flops(peak: Peak, flops: dict[str, FlopCount]) -> None:
    print(f"MFU denominator: {fmt_si(peak.flops, 'FLOP/s')} = {peak.label}")
    print(
        "FLOPs per training image (FlopCounterMode: conv + matmul only, 1 multiply-add = 2 FLOPs):"
    )
    for name, fc in flops.items():
        print(
            f"  {name}: forward {fmt_si(fc.forward, 'FLOP')}, forward+backward "
            f"{fmt_si(fc.train, 'FLOP')} ({fc.train / fc.forward:.2f}x forward)"
        )


def _speedup_checks(
    plans: list[ModelPlan], results: list[PathResult], device: torch.device, pipeline_s: float
) -> tuple[dict[str, float], list[Check]]:
    """Per model: print the speed-up (and on CPU its bound), check it and the data wait."""
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
    return speedups, checks


def _mfu_check(results: list[PathResult], device: torch.device) -> Check:
    rn50 = next((r for r in results if r.model == "resnet50" and r.path == "fast"), None)
    if device.type != "cuda":
        return Check(
            "ResNet50 MFU >= 25% (H100, bf16)",
            None,
            None,
            note="n/a (GPU target); CPU MFU vs the measured GEMM peak is in the table",
        )
    if rn50 is None:
        return Check("ResNet50 MFU (H100, bf16)", None, None, note="resnet50 not run")
    return Check(
        f"ResNet50 MFU, bf16, batch {rn50.batch}, {torch.cuda.get_device_name(device)}",
        100 * rn50.mfu,
        100 * TARGET_MFU,
        unit="%",
    )
