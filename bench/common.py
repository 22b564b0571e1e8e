"""What every benchmark shares: device sync and host facts, the one best-of-alternating-rounds
helper (``best_of_rounds``), batches across epochs (``forever``), child-process environments,
FLOP counting, device peak FLOP/s, peak-memory sampling, the synthetic dataset, and the table /
PASS-MISS formatting.

FLOP convention (torch.utils.flop_counter.FlopCounterMode): only convolutions and matrix
multiplications are counted, each multiply-add as 2 FLOPs (2 x MACs); BatchNorm, ReLU, pooling,
the loss and the optimizer are not counted. Backward counts grad-input and grad-weight
convolutions (the first conv has no grad-input), so a training step is ~3x the forward.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import torch
from torch import nn

from trainer.distributed import without_launcher_env
from trainer.synthetic import generate_synthetic

REPO = Path(__file__).resolve().parents[1]

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity), matched by substring of the device name,
# most specific first. H100/H200 SXM: 989 TF/s; PCIe/NVL parts are lower.
GPU_PEAKS_BF16: list[tuple[str, float]] = [
    ("H100 PCIE", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
]


# ---------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    """Wait for queued device work (no-op on CPU, where every op is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_count() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine() or "cpu"


def child_env(device_type: str, **extra: str) -> dict[str, str]:
    """Environment for a child Python process: launcher / Slurm variables removed (so the child
    is exactly what we start, whatever shell ran the benchmark), the repo importable, and no
    GPU visible when it is meant to run on the CPU."""
    env = without_launcher_env(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if device_type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def load_line() -> str:
    """One line describing how busy the host is (benchmarks on shared hosts are noisy)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    line = (
        f"host: {cpu_count()} usable cores, load average {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f} (1/5/15 min)"
    )
    if load[0] > cpu_count():
        line += (
            " - oversubscribed: other processes compete for the cores, so CPU figures are "
            "depressed and noisy (multi-threaded OpenMP steps suffer most)"
        )
    return line


# ---------------------------------------------------------------- rounds and batches
K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


def best_of_rounds(
    keys: Iterable[K], rounds: int, run: Callable[[K], R], *, score: Callable[[R], float]
) -> dict[K, R]:
    """Run every key ``rounds`` times and keep each key's best run (highest ``score``).

    The order reverses round by round (a, b, c, then c, b, a, ...), so every key sees the same
    drift in the host's load; on a shared host the best round is the one least disturbed by other
    processes. A key listed twice runs once per round.
    """
    order = list(dict.fromkeys(keys))
    best: dict[K, R] = {}
    for r in range(max(1, rounds)):
        for key in order if r % 2 == 0 else reversed(order):
            result = run(key)
            if key not in best or score(result) > score(best[key]):
                best[key] = result
    return best


def forever(loader: Iterable[R]) -> Iterator[R]:
    """A loader's batches across epochs, calling its ``set_epoch`` (the trainer's loaders) before
    each pass; epoch restarts are part of the measured time."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


# ---------------------------------------------------------------- FLOPs
@dataclass
class FlopCount:
    forward: float  # per image
    train: float  # per image: forward + backward

    @property
    def backward(self) -> float:
        return self.train - self.forward


def count_flops(model: nn.Module, device: torch.device, batch: int = 2) -> FlopCount:
    """FLOPs per image of one training step (forward + backward of cross-entropy), measured
    with FlopCounterMode on ``batch`` random images in train mode. The model is not updated."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    with FlopCounterMode(display=False) as fwd_counter:
        loss = nn.functional.cross_entropy(model(x), y)
    with FlopCounterMode(display=False) as bwd_counter:
        loss.backward()
    model.zero_grad(set_to_none=True)
    fwd = fwd_counter.get_total_flops() / batch
    bwd = bwd_counter.get_total_flops() / batch
    return FlopCount(forward=float(fwd), train=float(fwd + bwd))


# ---------------------------------------------------------------- device peak
def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype, n: int, seconds: float = 1.0, min_reps: int = 3
) -> float:
    """Best achieved FLOP/s of an n x n x n matmul (2 n^3 FLOPs) over ~``seconds``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    (a @ b).sum().item()  # warm-up (library init, thread pool, cuBLAS heuristics)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    reps = 0
    while reps < min_reps or time.perf_counter() < deadline:
        sync(device)
        t = time.perf_counter()
        inner = 10 if device.type == "cuda" else 1
        for _ in range(inner):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
        reps += 1
    return 2.0 * n**3 / best


@dataclass
class Peak:
    flops: float
    label: str  # where the figure comes from
    dtype: str


def device_peak(device: torch.device, quick: bool = False) -> Peak:
    """The FLOP/s that MFU is computed against.

    CUDA: dense bf16 tensor-core peak of the device by name (table above); an unknown GPU gets
    the achieved rate of a large bf16 matmul, labelled as measured. CPU: the achieved fp32 GEMM
    rate of this process with its current thread count ("measured GEMM peak") - a practical
    ceiling, not the vendor's theoretical peak.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAKS_BF16:
            if key in name.upper():
                return Peak(flops, f"{name}: {flops / 1e12:.0f} TFLOP/s dense bf16 (spec)", "bf16")
        flops = measure_matmul_flops(device, torch.bfloat16, 8192, seconds=2.0)
        return Peak(flops, f"{name}: not in the table; measured bf16 8192^3 matmul peak", "bf16")
    n = 1024 if quick else 2048
    flops = measure_matmul_flops(device, torch.float32, n, seconds=0.5 if quick else 1.5)
    return Peak(
        flops,
        f"measured GEMM peak (fp32 {n}^3 matmul, {torch.get_num_threads()} threads)",
        "fp32",
    )


# ---------------------------------------------------------------- memory
class PeakRss:
    """Samples the resident set size of this process and its children (DataLoader workers,
    ranks) in a background thread; ``peak`` is the largest sum seen."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._proc = psutil.Process()

    def sample(self) -> int:
        total = 0
        procs = [self._proc]
        with contextlib.suppress(psutil.Error):
            procs += self._proc.children(recursive=True)
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        self.peak = max(self.peak, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ---------------------------------------------------------------- data
def make_synthetic(root: str | os.PathLike[str], n_train: int, n_val: int, seed: int = 0) -> Path:
    """Write the trainer's synthetic CIFAR-format set under ``root``; returns the batch dir."""
    return generate_synthetic(root, n_train, n_val, seed)


# ---------------------------------------------------------------- formatting
def fmt_si(value: float, unit: str = "", digits: int = 3) -> str:
    """1.23e9 -> '1.23 G' + unit."""
    if value != value:  # NaN
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}".rstrip()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A plain-text table; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in rows) if rows else False for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line(cells[0]))
    out.append("  ".join("-" * w for w in widths))
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    text = str(value).strip().rstrip("%x").replace(",", "")
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class Check:
    """One target: PASS / MISS, or N/A with the reason it does not apply here."""

    name: str
    value: float | None
    target: float | None
    higher_is_better: bool = True
    unit: str = ""
    note: str = ""

    @property
    def status(self) -> str:
        if self.value is None or self.target is None:
            return "N/A"
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        if self.status == "N/A":
            return f"N/A   {self.name}: {self.note}".rstrip(": ")
        op = ">=" if self.higher_is_better else "<="
        text = f"{self.status:<5} {self.name}: {self.value:.3g}{self.unit} {op} "
        text += f"{self.target:.3g}{self.unit}"
        return text + (f"  ({self.note})" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status} | asdict(self)


def format_checks(checks: Sequence[Check]) -> str:
    return "\n".join(c.line() for c in checks)
