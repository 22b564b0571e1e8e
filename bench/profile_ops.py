"""Benchmark 4: where a training step's time goes, by kind of operator (torch.profiler), for the
fast path's compute setup (the trainer's, from bench.throughput.fast_compute) and the seed-style
one (fp32, NCHW) on the same model and batch. This module owns the operator categories, the
profiled step and the table with its speed-up bound.

The throughput benchmark says *how much* faster the fast path is; this says how much faster it
*could* be: once the input pipeline is off the critical path, what is left is the model's own
operators, and if convolutions hold share ``c`` of the step, nothing short of faster convolution
kernels can make the step more than ``1 / c`` times faster (Amdahl); the table's notes turn that
into a bound on the speed-up over the seed-style setup. Self time is counted per
operator (device time on CUDA, CPU time otherwise), so nested calls are not counted twice.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import best_of_rounds, format_table, sync
from bench.throughput import backend_flags, fast_compute, fast_training, seed_compute
from trainer.data import ArrayDataset

# the residual adds, copies, and the optimizer's updates (CPU: per-tensor add/mul; CUDA: the
# trainer's fused SGD / AdamW kernels, or foreach ones)
ELEMENTWISE = ("aten::add", "aten::mul", "aten::copy", "aten::clone", "aten::fill", "aten::zero")
CATEGORIES = ("convolution", "batch norm", "relu", "elementwise", "other")


def category(op: str) -> str:
    """The kind of an aten operator, by name (forward and backward together)."""
    name = op.lower()
    if "conv" in name:
        return "convolution"
    if "batch_norm" in name:
        return "batch norm"
    if "relu" in name or "threshold" in name:
        return "relu"
    if name.startswith(ELEMENTWISE) or "foreach" in name or "_fused_" in name:  # CUDA optimizers
        return "elementwise"
    return "other"


@dataclass
class OpShares:
    model: str
    path: str
    setup: str
    step_ms: float
    shares: dict[str, float]  # category -> fraction of the profiled self time

    def row(self) -> list[Any]:
        return [
            self.model,
            self.path,
            self.setup,
            f"{self.step_ms:.1f}",
            *(f"{100 * self.shares[c]:.1f}%" for c in CATEGORIES),
        ]


def random_dataset(n_train: int, n_val: int) -> ArrayDataset:
    """An in-memory set of random images for ``assemble`` (the profile steps on its own input)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_val, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, n_train + n_val)
    return ArrayDataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], list("0123456789"))


def profile_step(
    model_name: str, device: torch.device, batch: int, fast: bool, steps: int = 2
) -> tuple[float, dict[str, float], str]:
    """(operator ms per step, self-time share per category, setup) of the fast path's training step
    (the trainer's, as ``assemble`` builds it) or the seed-style one, on random input."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with backend_flags(fast):
        if fast:
            data = random_dataset(batch * (steps + 1), batch)
            compute = fast_compute(fast_training(model_name, batch, device, data))
        else:
            compute = seed_compute(model_name, device)
        x = torch.randn(batch, 3, 32, 32, device=device)
        x = x.contiguous(memory_format=compute.memory_format)
        y = torch.randint(0, 10, (batch,), device=device)
        compute.step(x, y)  # warm-up: allocator, cuDNN / oneDNN algorithm choice
        sync(device)
        with profile(activities=activities, acc_events=True) as prof:
            for _ in range(steps):
                compute.step(x, y)
            sync(device)
    totals: Counter[str] = Counter()
    for event in prof.key_averages():
        spent = event.self_device_time_total if cuda else event.self_cpu_time_total
        if spent > 0 and event.key.startswith("aten::"):
            totals[category(event.key)] += spent
    total = sum(totals.values()) or 1.0
    return total / 1e3 / steps, {c: totals[c] / total for c in CATEGORIES}, compute.setup


def run_profile(
    models: list[tuple[str, int]], device: torch.device, rounds: int = 2
) -> dict[str, Any]:
    """models: (name, batch). Prints the table and the Amdahl bound per model. The two setups
    alternate for ``rounds`` rounds and each keeps its fastest (bench.common.best_of_rounds), so
    that a noisy host does not favour one of them."""
    rows: list[OpShares] = []
    lines = []
    for model_name, batch in models:
        run = functools.partial(profile_step, model_name, device, batch)  # (fast) -> result
        best = best_of_rounds((True, False), rounds, run, score=lambda r: -r[0])  # fastest
        (fast_ms, fast, fast_setup), (seed_ms, seed, seed_setup) = best[True], best[False]
        rows.append(OpShares(model_name, "fast", fast_setup, fast_ms, fast))
        rows.append(OpShares(model_name, "seed-style", seed_setup, seed_ms, seed))
        conv_ms = fast_ms * fast["convolution"]
        lines.append(
            f"{model_name} (batch {batch}): convolutions take {conv_ms:.1f} of the fast path's "
            f"{fast_ms:.1f} operator ms/step; with every other operator free it could be at "
            f"most {seed_ms / max(conv_ms, 1e-9):.2f}x faster than seed-style's "
            f"{seed_ms:.1f} ms (input pipeline aside)"
        )
    print(
        format_table(
            ["model", "path", "setup", "op ms/step", *CATEGORIES],
            [r.row() for r in rows],
            title=f"Operator time by kind, {device} (torch.profiler self time, batch as listed)",
        )
    )
    for line in lines:
        print(line)
    return {
        "rows": [r.__dict__ for r in rows],
        "notes": lines,
    }
