"""The trainer's fast path (``trainer.build.assemble``, ``trainer.loop.train_step``) vs a
seed-style baseline (torchvision's CIFAR10, per-sample PIL transforms in DataLoader workers, fp32,
NCHW, plain SGD, ``loss.item()`` every step): throughput, and where each step's time goes."""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T
from torchvision.datasets import CIFAR10

from bench import common
from trainer.build import Training, assemble
from trainer.config import load_config
from trainer.data import MEAN, STD, ArrayDataset, read_cifar_dir
from trainer.loop import train_step
from trainer.models import build_model
from trainer.topology import topology_from_env

Batch = tuple[torch.Tensor, torch.Tensor]
Result = dict[str, Any]
Step = Callable[[torch.Tensor, torch.Tensor], Any]
TARGET_SPEEDUP, TARGET_DATA_WAIT, TARGET_MFU = {"cpu": 1.5, "cuda": 5.0}, 0.05, 0.25
# dense bf16 peaks (FLOP/s) by substring of the device name, most specific first
GPU_PEAKS_BF16 = {"H100 PCIE": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200 NVL": 835e12}
GPU_PEAKS_BF16 |= {"H200": 989e12, "GH200": 989e12, "A100": 312e12}
# operator kinds by name, first match wins; elementwise: residual adds, copies, the optimizer's
# updates (per tensor on CPU; the trainer's fused / foreach kernels on CUDA)
KINDS = {"convolution": ("conv",), "batch norm": ("batch_norm",), "relu": ("relu", "threshold")}
KINDS["elementwise"] = ("aten::add", "aten::mul", "aten::copy", "aten::clone", "aten::fill")
KINDS["elementwise"] += ("aten::zero", "foreach", "_fused_")
CATEGORIES = (*KINDS, "other")


class SeedCIFAR10(CIFAR10):
    """torchvision's CIFAR10 with the seed's transforms, minus the real archive's md5 checks."""

    def __init__(self, batch_dir: Path, train: bool = True) -> None:
        crop_flip = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
        pipeline = T.Compose([*crop_flip, T.ToTensor(), T.Normalize(MEAN, STD)])
        super().__init__(str(batch_dir.parent), train=train, transform=pipeline)

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        self.classes = [str(i) for i in range(10)]


@dataclass
class ModelPlan:
    model: str
    batch: int
    warmup: int
    steps: int


def row(r: Result) -> list[Any]:
    img_s, step, wait = f"{r['img_s']:,.1f}", f"{r['step_ms']:.1f}", f"{100 * r['data_wait']:.1f}%"
    mem, mfu = f"{r['peak_mem_bytes'] / 2**20:,.0f}", f"{100 * r['mfu']:.2f}%"
    return [r["model"], r["path"], r["batch"], img_s, step, wait, mem, mfu, r["setup"]]


def timed_loop(
    next_batch: Callable[[], Batch], step: Step, device: torch.device, warmup: int, steps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float]:  # fmt: skip
    """Seconds of ``steps`` steps after ``warmup``, and waiting for batches (CUDA: from events)."""
    for _ in range(warmup):
        step(*next_batch())
    common.sync(device)
    cuda, marks, data_s = device.type == "cuda", [], 0.0
    t0 = clock()
    for _ in range(steps):
        if cuda:
            begin, ready = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            begin.record()
            x, y = next_batch()
            ready.record()
            marks.append((begin, ready))
        else:
            td = clock()
            x, y = next_batch()
            data_s += clock() - td
        step(x, y)
    common.sync(device)
    total = clock() - t0
    if cuda:
        data_s = sum(b.elapsed_time(r) for b, r in marks) / 1000.0
    return total, data_s


def fast_compute(
    model: str, batch: int, device: torch.device, data: ArrayDataset, compile_model: bool = False
) -> tuple[Training, Step, str]:
    """The trainer as one process (default config), its step and setup (precision, layout)."""
    items = [f"model={model}", f"batch_size={batch}", f"compile={compile_model}"]
    t = assemble(load_config(None, items), topology_from_env({}), device, "none", data)
    dtype = str(t.amp_dtype).replace("torch.", "") if t.amp_dtype else "fp32"
    setup = f"{dtype}, {'NHWC' if t.cfg.channels_last else 'NCHW'}"
    return t, functools.partial(train_step, t), setup + (", compiled" if t.cfg.compile else "")


def seed_compute(model_name: str, device: torch.device) -> tuple[Step, str]:
    """The seed's step: fp32, NCHW, plain SGD, loss.item() every step, torch's default flags."""
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10).to(device)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step, "fp32, NCHW"


def run_path(plan: ModelPlan, path: str, batch_dir: Path, device: torch.device, a: Any) -> Result:
    """One timed run of a path, its memory counted from reading the data on."""
    with common.peak_memory(device) as peak:
        if path == "fast":
            data = read_cifar_dir(batch_dir)
            t, compute, setup = fast_compute(plan.model, plan.batch, device, data, a.compile)
            batches, setup = common.forever(t.train_loader), setup + ", on-device loader"
            next_batch = functools.partial(next, batches)
            # the trainer's per-step bookkeeping: device-side sums, no host sync
            sums = [torch.zeros((), dtype=torch.float64, device=device) for _ in range(2)]

            def step(x: torch.Tensor, y: torch.Tensor) -> None:
                loss, correct = compute(x, y)
                sums[0].add_(loss.double() * y.shape[0])
                sums[1].add_(correct)
        else:
            options = {"num_workers": a.workers, "pin_memory": device.type == "cuda"}
            loader = torch.utils.data.DataLoader(
                SeedCIFAR10(batch_dir), plan.batch, shuffle=True, drop_last=True, **options
            )
            compute, setup = seed_compute(plan.model, device)
            batches = common.forever(loader)
            setup += f", DataLoader + PIL, {a.workers} workers"
            losses: list[float] = []  # the running loss, a host float per step

            def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
                x, y = next(batches)
                return x.to(device), y.to(device)

            def step(x: torch.Tensor, y: torch.Tensor) -> None:
                losses.append(compute(x, y))

        total, data_s = timed_loop(next_batch, step, device, plan.warmup, plan.steps)
        batches.close()  # stops the baseline's workers inside the memory window
    rates = {"img_s": plan.batch * plan.steps / total, "step_ms": 1000 * total / plan.steps}
    figures = {"model": plan.model, "path": path, "batch": plan.batch, "setup": setup}
    return figures | rates | {"data_wait": data_s / total, "peak_mem_bytes": peak[0]}


def count_flops(model: torch.nn.Module, device: torch.device, n: int = 2) -> dict[str, float]:
    """FLOPs per image of a training step: convolutions and matmuls, 2 per multiply-add; the
    backward has grad-input and grad-weight convolutions, so a step is ~3x the forward."""
    x, y = torch.randn(n, 3, 32, 32, device=device), torch.arange(n, device=device) % 10
    with FlopCounterMode(display=False) as fwd:
        loss = torch.nn.functional.cross_entropy(model(x), y)
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    forward, backward = fwd.get_total_flops() / n, bwd.get_total_flops() / n
    return {"forward": forward, "train": forward + backward}


def device_peak(device: torch.device, quick: bool) -> tuple[float, str]:
    """MFU's denominator: a GPU's bf16 peak by name, else the best n^3 matmul we achieve."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    if peak := next((f for key, f in GPU_PEAKS_BF16.items() if gpu and key in gpu.upper()), 0):
        return peak, f"{gpu}: {peak / 1e12:.0f} TFLOP/s dense bf16 (spec)"
    n, dtype, seconds = (8192, torch.bfloat16, 2.0) if gpu else (2048, torch.float32, 1.5)
    n, seconds = (1024, 0.5) if quick and not gpu else (n, seconds)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    threads = torch.get_num_threads()
    timer = Timer("a @ b", globals={"a": a, "b": b}, num_threads=threads)
    peak = 2.0 * n**3 / min(timer.blocked_autorange(min_run_time=seconds).times)
    if gpu:
        return peak, f"{gpu}: not in the table; measured bf16 8192^3 matmul peak"
    return peak, f"measured GEMM peak (fp32 {n}^3 matmul, {threads} threads)"


def fmt_si(value: float, unit: str) -> str:  # 1.23e9 -> '1.23 G' + unit
    scales = zip((1e15, 1e12, 1e9, 1e6, 1e3), "PTGMk", strict=True)
    factor, prefix = next(((f, p) for f, p in scales if value >= f), (1.0, ""))
    return f"{value / factor:.3g} {prefix}{unit}"


def run_throughput(
    plans: list[ModelPlan], batch_dir: Path, device: torch.device, a: Any
) -> list[Result]:
    """Both paths, each its best of ``a.rounds`` alternating rounds, with its largest peak."""
    peak, results, flops, rounds = device_peak(device, a.quick), [], {}, a.rounds
    for plan in plans:
        torch.manual_seed(0)
        flops[plan.model] = count_flops(build_model(plan.model).to(device), device)
        peaks: dict[str, int] = {}

        def run(path: str, plan: ModelPlan = plan, peaks: dict[str, int] = peaks) -> Result:
            r = run_path(plan, path, batch_dir, device, a)
            peaks[path] = max(peaks.get(path, 0), r["peak_mem_bytes"])
            return r

        best = common.best_of_rounds(("fast", "baseline"), rounds, run, lambda r: r["img_s"])
        for path, r in best.items():
            mfu = r["img_s"] * flops[plan.model]["train"] / peak[0]
            results.append(r | {"peak_mem_bytes": peaks[path], "mfu": mfu})
    kind = "RSS peak of the process + its workers (shared pages once per process)"
    kind = "cuda max allocated" if device.type == "cuda" else kind
    steps = ", ".join(f"{p.model} {p.steps}" for p in plans)
    title = f"Throughput on {device.type}: best of {rounds} alternating round(s), warm-up "
    title += f"{plans[0].warmup} steps, then {steps} timed steps; peak MiB = {kind}"
    headers = ["model", "path", "batch", "img/s", "step ms", "data wait", "peak MiB", "MFU"]
    print(common.format_table([*headers, "setup"], [row(r) for r in results], title))
    print(f"MFU denominator: {fmt_si(peak[0], 'FLOP/s')} = {peak[1]}")
    print("FLOPs per training image (FlopCounterMode, conv + matmul only, multiply-add = 2):")
    for name, fc in flops.items():
        f, t = fc["forward"], fc["train"]
        fb = f"forward+backward {fmt_si(t, 'FLOP')} ({t / f:.2f}x forward)"
        print(f"  {name}: forward {fmt_si(f, 'FLOP')}, {fb}")
    dataset = SeedCIFAR10(batch_dir)
    dataset[0]
    t0 = time.perf_counter()
    for i in range(256):
        dataset[i]
    pipeline_s = (time.perf_counter() - t0) / 256  # one core's seconds per image
    pipeline = "seed-style per-sample pipeline (PIL RandomCrop+Flip+ToTensor+Normalize)"
    print(f"{pipeline}: {1e6 * pipeline_s:.0f} us/image on one core")
    checks = []
    by_key = {(r["model"], r["path"]): r for r in results}
    for plan in plans:
        fast, base = by_key[(plan.model, "fast")], by_key[(plan.model, "baseline")]
        speedup = fast["img_s"] / base["img_s"]
        if device.type == "cpu":
            # Both paths run the same fp32 model on the same cores; what the fast path removes
            # is the per-sample work, so its share at the fast path's rate bounds the gain.
            share = pipeline_s * fast["img_s"] / (threads := torch.get_num_threads())
            took = f"{plan.model}: at {fast['img_s']:,.1f} img/s the per-sample pipeline would take"
            gain = f"so removing it can speed CPU training up by about {1 + share:.2f}x at most"
            print(f"{took} {100 * share:.1f}% of {threads} cores, {gain}")
        versus = f"fast {fast['img_s']:,.1f} img/s vs baseline {base['img_s']:,.1f} img/s"
        print(f"{plan.model}: {versus} = {speedup:.2f}x (batch {plan.batch})")
        name = f"fast/baseline img/s, {plan.model}, batch {plan.batch}, {device.type}"
        checks.append(common.check(name, speedup, TARGET_SPEEDUP[device.type], "x"))
        wait, name = 100 * fast["data_wait"], f"fast-path data wait, {plan.model}"
        checks.append(common.check(name, wait, 100 * TARGET_DATA_WAIT, "%", lower=True))
    rn50, gpu, mfu = by_key.get(("resnet50", "fast")), device.type == "cuda", "ResNet50 MFU"
    if gpu and rn50:
        name = f"{mfu}, bf16, batch {rn50['batch']}, {torch.cuda.get_device_name(device)}"
        checks.append(common.check(name, 100 * rn50["mfu"], 100 * TARGET_MFU, "%"))
    elif gpu:
        checks.append(common.check(f"{mfu} (H100, bf16)", None, None, note="resnet50 not run"))
    else:
        note = "n/a (GPU target); CPU MFU vs the measured GEMM peak is in the table"
        checks.append(common.check(f"{mfu} >= 25% (H100, bf16)", None, None, note=note))
    return checks


def profile_step(
    model: str, device: torch.device, batch: int, batch_dir: Path, fast: bool, steps: int = 2
) -> tuple[float, dict[str, float], str]:
    """Operator ms per step, self-time share per kind and setup of either step, random input."""
    cuda = device.type == "cuda"
    if fast:  # the staged set only fills the loader: the steps take random input
        _, compute, setup = fast_compute(model, batch, device, read_cifar_dir(batch_dir))
    else:
        compute, setup = seed_compute(model, device)
    nhwc = torch.channels_last if "NHWC" in setup else torch.contiguous_format
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=nhwc)
    y = torch.randint(0, 10, (batch,), device=device)
    compute(x, y)  # warm-up: allocator, cuDNN / oneDNN algorithm choice
    common.sync(device)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities, acc_events=True) as prof:
        for _ in range(steps):
            compute(x, y)
        common.sync(device)
    totals: Counter[str] = Counter()
    for event in prof.key_averages():
        spent = event.self_device_time_total if cuda else event.self_cpu_time_total
        if spent > 0 and event.key.startswith("aten::"):
            totals[category(event.key)] += spent
    total = sum(totals.values()) or 1.0
    return total / 1e3 / steps, {k: totals[k] / total for k in CATEGORIES}, setup


def category(op: str) -> str:
    """The kind of an aten operator, by name (forward and backward together)."""
    return next((k for k, marks in KINDS.items() if any(m in op.lower() for m in marks)), "other")


def run_profile(plans: list[ModelPlan], data: Path, device: torch.device, rounds: int) -> None:
    """Each setup's fastest of ``rounds``; convolutions' c ms bound the fast step from below."""
    rows, notes = [], []
    for model, batch in ((p.model, p.batch) for p in plans):
        run = functools.partial(profile_step, model, device, batch, data)
        best = common.best_of_rounds((True, False), rounds, run, lambda r: -r[0])
        for path, (ms, shares, setup) in (("fast", best[True]), ("seed-style", best[False])):
            rows.append([model, path, setup, f"{ms:.1f}"])
            rows[-1] += [f"{100 * shares[k]:.1f}%" for k in CATEGORIES]
        (fast_ms, fast, _), seed_ms = best[True], best[False][0]
        conv_ms = fast_ms * fast["convolution"]
        notes.append(
            f"{model} (batch {batch}): convolutions take {conv_ms:.1f} of the fast path's "
            f"{fast_ms:.1f} operator ms/step; with every other operator free it could be at "
            f"most {seed_ms / max(conv_ms, 1e-9):.2f}x faster than seed-style's "
            f"{seed_ms:.1f} ms (input pipeline aside)"
        )
    title = f"Operator time by kind, {device} (torch.profiler self time, batch as listed)"
    print(common.format_table(["model", "path", "setup", "op ms/step", *CATEGORIES], rows, title))
    print("\n".join(notes))
