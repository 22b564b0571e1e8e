"""Benchmark 2: DDP scaling over 1, 2 and 4 ranks on this host.

Each multi-rank point starts N real processes (``python -m bench.scaling --worker``) with
RANK / WORLD_SIZE / MASTER_ADDR=127.0.0.1 / a free MASTER_PORT, which train with the trainer's
own pieces (DeviceLoader sharded by rank, build_optimizer, train_step) wrapped in DDP as the
trainer wraps it (gradient_as_bucket_view, 25 MB buckets). The 1-rank point is a plain process
without DDP, which is what the trainer runs for world_size 1: the efficiency therefore includes
the whole cost of going distributed.

CPU / gloo, two views:

* fixed per-rank threads t (= cores // 4, at least 1): efficiency(N) = aggregate(N) /
  (min(N, cores / t) x single(1 rank, t threads)). The denominator is what the hardware can
  physically deliver: with fewer than N x t cores the ranks time-share cores, and a perfect
  implementation can reach at most cores / t times one rank. This is the target's metric.
* constant thread budget (the host's cores split between the ranks): efficiency(N) =
  aggregate(N) / single(1 rank, all cores). Same hardware, more ranks: it also contains how
  well one process uses several cores (intra-op threading), so it can exceed 100 %.

CUDA / NCCL: one rank per GPU (ResNet50, bf16, channels_last); needs at least 2 GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    REPO,
    Check,
    child_env,
    cpu_count,
    format_checks,
    format_table,
    free_port,
    load_line,
    sync,
)

TARGET_EFF = {"gloo": 0.90, "nccl": 0.95}


@dataclass
class RankResult:
    rank: int
    world: int
    threads: int
    batch: int
    steps: int
    elapsed_s: float
    cpu_s: float  # CPU time of the whole process (all its threads) over the timed steps


@dataclass
class Point:
    ranks: int
    threads_per_rank: int
    batch_per_rank: int
    per_rank_img_s: float  # mean over ranks
    aggregate_img_s: float
    step_ms: float  # slowest rank
    cores_used: float  # CPU seconds of all ranks / wall seconds: the cores the ranks really got

    @property
    def img_per_cpu_s(self) -> float:
        return self.aggregate_img_s / max(self.cores_used, 1e-9)


# ---------------------------------------------------------------- one rank
def train_rank(
    rank: int,
    world: int,
    model_name: str,
    batch: int,
    warmup: int,
    steps: int,
    batch_dir: str,
    device_type: str,
) -> RankResult:
    """Train ``warmup + steps`` steps as rank ``rank`` of ``world`` (process group already up
    when world > 1); returns this rank's timing of the last ``steps`` steps."""
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    from trainer.config import load_config
    from trainer.data import DeviceLoader, read_cifar_dir
    from trainer.models import build_model
    from trainer.train import build_optimizer, build_scheduler, train_step

    cuda = device_type == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    cfg = load_config(None, [f"model={model_name}", f"batch_size={batch}"])
    amp_dtype = torch.bfloat16 if cuda else None
    data = read_cifar_dir(batch_dir)
    torch.manual_seed(cfg.seed)
    model: nn.Module = build_model(model_name, num_classes=len(data.classes)).to(device)
    if cfg.channels_last:  # as the trainer does, on CPU too
        model = model.to(memory_format=torch.channels_last)
    loader = DeviceLoader(
        data.train_x,
        data.train_y,
        batch_size=batch,
        rank=rank,
        world=world,
        device=device,
        seed=cfg.seed,
        train=True,
        augment=True,
        channels_last=cfg.channels_last,
    )
    optimizer = build_optimizer(model, cfg, cfg.lr * batch * world / 256, device)
    scheduler, _, _ = build_scheduler(optimizer, cfg, len(loader))
    train_model: nn.Module = model
    if world > 1:
        train_model = DDP(
            model,
            device_ids=[rank] if cuda else None,
            gradient_as_bucket_view=True,
            bucket_cap_mb=cfg.ddp_bucket_cap_mb,
        )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def batches() -> Any:
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    it = batches()
    for _ in range(warmup):
        train_step(train_model, *next(it), criterion, optimizer, scheduler, None, amp_dtype)
    sync(device)
    if world > 1:
        dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        train_step(train_model, *next(it), criterion, optimizer, scheduler, None, amp_dtype)
    sync(device)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if world > 1:
        dist.barrier()
    return RankResult(rank, world, torch.get_num_threads(), batch, steps, elapsed, cpu)


def _worker(argv: list[str]) -> int:
    """Entry point of one spawned rank: env gives RANK / WORLD_SIZE / MASTER_*."""
    import datetime

    import torch.distributed as dist

    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    for name in ("model", "data", "out", "device"):
        ap.add_argument(f"--{name}", required=True)
    for name in ("batch", "warmup", "steps", "threads"):
        ap.add_argument(f"--{name}", type=int, required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = "nccl" if a.device == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        torch.cuda.set_device(rank)
        kwargs["device_id"] = torch.device("cuda", rank)
    dist.init_process_group(
        backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300), **kwargs
    )
    try:
        res = train_rank(rank, world, a.model, a.batch, a.warmup, a.steps, a.data, a.device)
    finally:
        dist.destroy_process_group()
    Path(a.out).write_text(json.dumps(asdict(res)))
    return 0


# ---------------------------------------------------------------- launching
def launch(
    world: int,
    threads: int,
    model_name: str,
    batch: int,
    warmup: int,
    steps: int,
    batch_dir: Path,
    device_type: str,
    timeout: float = 300.0,
) -> list[RankResult]:
    """Run ``world`` ranks; world 1 runs in this process without DDP."""
    if world == 1:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return [train_rank(0, 1, model_name, batch, warmup, steps, str(batch_dir), device_type)]
        finally:
            torch.set_num_threads(old)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        logs = [Path(tmp) / f"rank{r}.log" for r in range(world)]
        for r in range(world):
            env = child_env(
                device_type,
                RANK=str(r),
                WORLD_SIZE=str(world),
                LOCAL_RANK=str(r),
                LOCAL_WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                OMP_NUM_THREADS=str(threads),
            )
            cmd = [
                sys.executable,
                "-m",
                "bench.scaling",
                "--worker",
                "--model",
                model_name,
                "--data",
                str(batch_dir),
                "--out",
                str(Path(tmp) / f"rank{r}.json"),
                "--device",
                device_type,
                "--batch",
                str(batch),
                "--warmup",
                str(warmup),
                "--steps",
                str(steps),
                "--threads",
                str(threads),
            ]
            with open(logs[r], "wb") as log:
                procs.append(
                    subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        try:
            for p in procs:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes = [None] * world
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if any(c != 0 for c in codes):
            tails = "\n".join(
                f"--- rank {r} (exit {codes[r] if r < len(codes) else None}) ---\n"
                + logs[r].read_text(errors="replace")[-3000:]
                for r in range(world)
            )
            raise RuntimeError(f"{world}-rank DDP run failed:\n{tails}")
        return [
            RankResult(**json.loads((Path(tmp) / f"rank{r}.json").read_text()))
            for r in range(world)
        ]


def _point(results: list[RankResult]) -> Point:
    r0 = results[0]
    slowest = max(r.elapsed_s for r in results)
    return Point(
        ranks=r0.world,
        threads_per_rank=r0.threads,
        batch_per_rank=r0.batch,
        per_rank_img_s=sum(r.batch * r.steps / r.elapsed_s for r in results) / len(results),
        aggregate_img_s=r0.world * r0.batch * r0.steps / slowest,
        step_ms=1000 * slowest / r0.steps,
        cores_used=sum(r.cpu_s for r in results) / slowest,
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# ---------------------------------------------------------------- the benchmark
def run_scaling_cpu(
    model_name: str, batch: int, warmup: int, steps: int, batch_dir: Path, cores: int | None = None
) -> dict[str, Any]:
    cores = cores or cpu_count()
    t_fixed = max(1, cores // 4)
    cache: dict[tuple[int, int], Point] = {}

    def point(n: int, t: int) -> Point:
        if (n, t) not in cache:
            cache[(n, t)] = _point(launch(n, t, model_name, batch, warmup, steps, batch_dir, "cpu"))
        return cache[(n, t)]

    print(
        f"DDP scaling, CPU / gloo, {model_name}, per-rank batch {batch}, {steps} timed steps "
        f"after {warmup} warm-up; {cores} usable cores\n{load_line()}"
    )
    # (a) fixed per-rank threads, efficiency against what the hardware can deliver
    single = point(1, t_fixed)
    rows, eff_wall, eff_cpu = [], {}, {}
    for n in (1, 2, 4):
        p = point(n, t_fixed)
        possible = min(n, max(1, cores // t_fixed))
        eff_wall[n] = p.aggregate_img_s / (possible * single.aggregate_img_s)
        eff_cpu[n] = p.img_per_cpu_s / single.img_per_cpu_s
        over = " (oversubscribed)" if n * t_fixed > cores else ""
        rows.append(
            [
                n,
                t_fixed,
                f"{n * t_fixed}{over}",
                f"{p.per_rank_img_s:,.1f}",
                f"{p.aggregate_img_s:,.1f}",
                f"{p.step_ms:.0f}",
                f"{p.cores_used:.2f}",
                f"{possible}x",
                _pct(eff_wall[n]),
                _pct(eff_cpu[n]),
                _pct(p.aggregate_img_s / (n * single.aggregate_img_s)),
            ]
        )
    print(
        format_table(
            [
                "ranks",
                "thr/rank",
                "threads",
                "img/s/rank",
                "aggregate img/s",
                "step ms",
                "cores used",
                "ideal",
                "eff (wall)",
                "eff (CPU-s)",
                "vs N x single",
            ],
            rows,
            title=f"(a) fixed {t_fixed} thread(s) per rank. eff (wall) = aggregate(N) / (ideal x "
            f"single), ideal = min(N, {cores} cores / {t_fixed} thr); eff (CPU-s) = images per "
            "CPU-second of all ranks / the same for 1 rank",
        )
    )
    # (b) constant thread budget
    base = point(1, cores)
    budget_rows, eff_budget = [], {}
    for n in (1, 2, 4):
        t = max(1, cores // n)
        p = point(n, t)
        eff_budget[n] = p.aggregate_img_s / base.aggregate_img_s
        note = f"{n * t} threads on {cores} cores" + (" (oversubscribed)" if n * t > cores else "")
        budget_rows.append(
            [
                n,
                t,
                f"{p.aggregate_img_s:,.1f}",
                f"{p.step_ms:.0f}",
                f"{p.cores_used:.2f}",
                _pct(eff_budget[n]),
                note,
            ]
        )
    print(
        format_table(
            [
                "ranks",
                "thr/rank",
                "aggregate img/s",
                "step ms",
                "cores used",
                "efficiency",
                "budget",
            ],
            budget_rows,
            title=f"(b) constant budget of {cores} threads; efficiency = aggregate(N) / "
            f"single(1 rank x {cores} threads); can exceed 100 % when one process uses "
            "its threads less well than separate ranks do",
        )
    )
    print(
        "How to read it: the target uses view (a). Each rank gets the same threads as the 1-rank "
        "reference, and N ranks are compared with what the cores can physically deliver: "
        f"min(N, {cores // t_fixed}) x one rank"
        + (
            f" (with {cores} cores, 4 ranks x {t_fixed} thread time-share the cores, so ideal is "
            f"{cores // t_fixed}x, not 4x)"
            if 4 * t_fixed > cores
            else ""
        )
        + ". 'cores used' = CPU-seconds of all ranks / wall seconds: on a shared host other "
        "processes take cores too, so eff (CPU-s) - images per CPU-second, which other load "
        "does not change - is printed alongside as the load-independent figure."
    )
    checks = [
        Check(
            "4-rank DDP efficiency, CPU/gloo, wall clock vs hardware limit (view a)",
            100 * eff_wall[4],
            100 * TARGET_EFF["gloo"],
            unit="%",
        ),
        Check(
            "4-rank DDP efficiency, CPU/gloo, per CPU-second (view a)",
            100 * eff_cpu[4],
            100 * TARGET_EFF["gloo"],
            unit="%",
        ),
    ]
    print(format_checks(checks))
    return {
        "backend": "gloo",
        "model": model_name,
        "cores": cores,
        "threads_per_rank_fixed": t_fixed,
        "points": [dict(asdict(p), img_per_cpu_s=p.img_per_cpu_s) for p in cache.values()],
        "efficiency_wall": eff_wall,
        "efficiency_cpu_s": eff_cpu,
        "efficiency_budget": eff_budget,
        "checks": [c.to_dict() for c in checks],
    }


def run_scaling_cuda(
    model_name: str, batch: int, warmup: int, steps: int, batch_dir: Path
) -> dict[str, Any]:
    n_gpu = torch.cuda.device_count()
    counts = [n for n in (1, 2, 4) if n <= n_gpu]
    if n_gpu < 2:
        why = (
            f"NCCL scaling needs >= 2 GPUs; this machine has {n_gpu}. NCCL refuses two ranks "
            "on one GPU, and time-sharing one GPU would measure contention, not scaling."
        )
        check = Check("4-rank DDP efficiency, NCCL", None, None, note=why)
        print(format_checks([check]))
        return {"backend": "nccl", "gpus": n_gpu, "skipped": why, "checks": [check.to_dict()]}
    print(
        f"DDP scaling, CUDA / NCCL, {model_name} bf16 channels_last, per-GPU batch {batch}, "
        f"{steps} timed steps after {warmup} warm-up; {n_gpu} GPUs"
    )
    points = {
        n: _point(launch(n, 4, model_name, batch, warmup, steps, batch_dir, "cuda")) for n in counts
    }
    single = points[1]
    rows, eff = [], {}
    for n, p in points.items():
        eff[n] = p.aggregate_img_s / (n * single.aggregate_img_s)
        rows.append(
            [
                n,
                f"{p.per_rank_img_s:,.0f}",
                f"{p.aggregate_img_s:,.0f}",
                f"{p.step_ms:.1f}",
                f"{100 * eff[n]:.1f}%",
            ]
        )
    print(
        format_table(
            ["GPUs", "img/s/GPU", "aggregate img/s", "step ms", "efficiency"],
            rows,
            title="efficiency = aggregate(N) / (N x single GPU without DDP)",
        )
    )
    if 4 in eff:
        check = Check(
            "4-rank DDP efficiency, NCCL", 100 * eff[4], 100 * TARGET_EFF["nccl"], unit="%"
        )
    else:
        check = Check(
            "4-rank DDP efficiency, NCCL",
            None,
            None,
            note=f"only {n_gpu} GPUs; measured up to {counts[-1]}",
        )
    print(format_checks([check]))
    return {
        "backend": "nccl",
        "gpus": n_gpu,
        "points": [asdict(p) for p in points.values()],
        "efficiency": eff,
        "checks": [check.to_dict()],
    }


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        raise SystemExit(_worker(sys.argv[1:]))
    raise SystemExit("bench.scaling is started by `python -m bench`; see bench/__main__.py")
