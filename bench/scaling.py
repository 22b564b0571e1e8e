"""DDP scaling over 1, 2 and 4 ranks on this host (README, Performance, says how to read it):
ranks start as ``torchrun --standalone`` starts them and train what ``assemble`` builds; without
DDP (the reference) each rank is assembled as one process: same ranks and cores, no all-reduce."""

from __future__ import annotations

import functools
import operator
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bench import common
from bench.throughput import ModelPlan, timed_loop
from trainer import distributed
from trainer.build import assemble
from trainer.config import load_config
from trainer.data import read_cifar_dir
from trainer.loop import train_step
from trainer.topology import topology_from_env

TARGET_EFF = {"gloo": 0.90, "nccl": 0.95}
RANK_COUNTS = (1, 2, 4)
Key = tuple[int, int, bool]  # (ranks, threads per rank, DDP)
SCORE = operator.attrgetter("aggregate_img_s")  # a point's best round is its fastest


@dataclass
class RankSpec(ModelPlan):  # what every rank of a point trains (batch: per rank)
    batch_dir: Path
    device_type: str  # "cpu" (gloo) | "cuda" (NCCL, one GPU per rank)


@dataclass
class Point:
    ranks: int
    threads_per_rank: int
    per_rank_img_s: float  # mean over ranks
    aggregate_img_s: float
    step_ms: float  # slowest rank
    cores_used: float  # CPU seconds of all ranks / wall seconds: the cores the ranks really got

    def figures(self) -> list[str]:  # aggregate img/s, step ms, cores used
        return [f"{self.aggregate_img_s:,.1f}", f"{self.step_ms:.0f}", f"{self.cores_used:.2f}"]


def train_rank(spec: RankSpec, threads: int, ddp: bool) -> tuple[float, float]:
    """One rank, placed by the launcher's variables: wall and process CPU seconds of its steps."""
    torch.set_num_threads(threads)
    topo = topology_from_env()
    device = distributed.select_device(topo) if spec.device_type == "cuda" else torch.device("cpu")
    backend, together = "none", topo.is_distributed
    if together:
        backend = distributed.init_distributed(
            topo, device, "nccl" if device.type == "cuda" else "gloo", 300
        )
    try:
        cfg = load_config(None, [f"model={spec.model}", f"batch_size={spec.batch}"])
        shape = (topo, backend) if ddp and together else (topology_from_env({}), "none")
        t = assemble(cfg, shape[0], device, shape[1], read_cifar_dir(spec.batch_dir))
        loop = (
            functools.partial(next, common.forever(t.train_loader)),
            functools.partial(train_step, t),
        )
        timed_loop(*loop, device, spec.warmup, 0)
        if together:
            dist.barrier()  # the ranks start their timed steps together, and stop together
        c0 = time.process_time()
        wall, _ = timed_loop(*loop, device, 0, spec.steps)
        cpu = time.process_time() - c0
        if together:
            dist.barrier()
    finally:
        distributed.cleanup_distributed()
    return wall, cpu


def launch(spec: RankSpec, key: Key) -> Point:
    """``world`` ranks of ``threads`` threads, started as ``torchrun --standalone`` does."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    world, threads, ddp = key
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as logs:
        rdzv = {"rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0"}  # --standalone
        # min and max nodes, ranks per node, where their output goes, the run's id
        specs = DefaultLogsSpecs(log_dir=logs, redirects=Std.ALL)
        config = LaunchConfig(1, 1, world, specs, str(uuid.uuid4()), max_restarts=0, **rdzv)
        with common.child_environ(spec.device_type, OMP_NUM_THREADS=str(threads)):
            ranks = list(elastic_launch(config, train_rank)(spec, threads, ddp).values())
    slowest, images = max(wall for wall, _ in ranks), spec.batch * spec.steps
    per_rank = sum(images / wall for wall, _ in ranks) / world
    cores = sum(cpu for _, cpu in ranks) / slowest
    aggregate, step_ms = world * images / slowest, 1000 * slowest / spec.steps
    return Point(world, threads, per_rank, aggregate, step_ms, cores)


def measure(spec: RankSpec, keys: list[Key], rounds: int) -> dict[Key, Point]:
    """Every point's fastest (highest aggregate img/s) of ``rounds`` alternating rounds."""
    return common.best_of_rounds(keys, rounds, functools.partial(launch, spec), SCORE)


def run_scaling_cpu(spec: RankSpec, rounds: int) -> list[dict[str, Any]]:
    """Gloo: (a) fixed threads per rank, DDP vs the same ranks without it; (b) the cores split."""
    cores = common.cpu_count()
    t_fixed = max(1, cores // 4)
    what = f"per-rank batch {spec.batch}, {spec.steps} timed steps after {spec.warmup} warm-up"
    how = f"best of {rounds} alternating round(s); {cores} usable cores"
    print(f"DDP scaling, CPU / gloo, {spec.model}, {what}, {how}")
    keys = [(n, t_fixed, True) for n in RANK_COUNTS]
    keys += [(n, t_fixed, False) for n in RANK_COUNTS if n > 1]  # 1 rank never uses DDP
    cache = measure(spec, keys + [(n, max(1, cores // n), True) for n in RANK_COUNTS], rounds)
    print(common.load_line())
    one, agg = cache[(1, t_fixed, True)], {key: p.aggregate_img_s for key, p in cache.items()}
    per = cores // t_fixed  # ranks the cores can run at once
    rows, budget_rows = [], []
    for n in RANK_COUNTS:  # ending with 4: the checks' figures are the last row's
        p, solo, ideal = cache[(n, t_fixed, True)], agg[(n, t_fixed, n == 1)], min(n, per)
        ddp_eff, deliver = p.aggregate_img_s / solo, solo / one.aggregate_img_s
        wall_eff = p.aggregate_img_s / (ideal * one.aggregate_img_s)
        cpu_eff = (p.aggregate_img_s / p.cores_used) / (one.aggregate_img_s / one.cores_used)
        over = " (oversubscribed)" if n * t_fixed > cores else ""
        effs = [f"{ddp_eff:.1%}", f"{deliver:.2f}x of {ideal}x"]
        effs += [f"{wall_eff:.1%}", f"{cpu_eff:.1%}"]
        rows.append([n, t_fixed, f"{n * t_fixed}{over}", *p.figures(), f"{solo:,.1f}", *effs])
        t = max(1, cores // n)
        p, over = cache[(n, t, True)], " (oversubscribed)" if n * t > cores else ""
        eff = f"{p.aggregate_img_s / agg[(1, cores, True)]:.1%}"
        budget_rows.append([n, t, *p.figures(), eff, f"{n * t} threads on {cores} cores{over}"])
    headers = ["ranks", "thr/rank", "threads", "DDP img/s", "step ms", "cores used"]
    headers += ["no-DDP img/s", "DDP eff", "cores deliver", "eff vs ideal", "eff (CPU-s)"]
    title = f"(a) fixed {t_fixed} thread(s) per rank; no-DDP = the same ranks side by side "
    title += f"without all-reduce; ideal = min(N, {cores} cores / {t_fixed} thr); DDP eff = "
    title += "DDP / no-DDP; cores deliver = no-DDP / one rank alone; eff vs ideal = DDP / (ideal "
    title += "x one rank alone); eff (CPU-s) = images per CPU-second vs one rank alone"
    print(common.format_table(headers, rows, title=title))
    headers = ["ranks", "thr/rank", "aggregate img/s", "step ms", "cores used", "efficiency"]
    title = f"(b) constant budget of {cores} threads; efficiency = aggregate(N) / single(1 "
    title += f"rank x {cores} threads), above 100 % when ranks use the threads better"
    print(common.format_table([*headers, "budget"], budget_rows, title=title))
    print(
        f"The host's own limit: 4 ranks that never communicate deliver {deliver:.2f}x of an "
        f"ideal {ideal}x; 'DDP eff' is what going distributed costs, the target's figure"
    )
    target = 100 * TARGET_EFF["gloo"]
    name = "4-rank DDP efficiency, CPU/gloo, vs the same 4 ranks without DDP side by side"
    checks = [common.check(name, 100 * ddp_eff, target, "%")]
    name = f"4-rank DDP efficiency, CPU/gloo, vs {ideal} x one rank alone (includes the host's "
    name += "cores slowing when all are busy)"
    return [*checks, common.check(name, 100 * wall_eff, target, "%")]


def run_scaling_cuda(spec: RankSpec, rounds: int) -> list[dict[str, Any]]:
    """NCCL, one rank per GPU, as far as the GPUs go."""
    n_gpu, points = torch.cuda.device_count(), {}
    note = f"NCCL scaling needs >= 2 GPUs; this machine has {n_gpu}. NCCL refuses two ranks on "
    note += "one GPU, and time-sharing one GPU would measure contention, not scaling."
    if n_gpu >= 2:
        what = f"per-GPU batch {spec.batch}, {spec.steps} timed steps after {spec.warmup} warm-up"
        how = f"best of {rounds} round(s); {n_gpu} GPUs"
        print(f"DDP scaling, CUDA / NCCL, {spec.model} bf16 channels_last, {what}, {how}")
        counts, note = [n for n in RANK_COUNTS if n <= n_gpu], f"only {n_gpu} GPUs"
        points = {k[0]: p for k, p in measure(spec, [(n, 4, True) for n in counts], rounds).items()}
        rows = []
        for n, p in points.items():
            eff = p.aggregate_img_s / (n * points[1].aggregate_img_s)
            rates = f"{p.per_rank_img_s:,.0f}", f"{p.aggregate_img_s:,.0f}", f"{p.step_ms:.1f}"
            rows.append([n, *rates, f"{eff:.1%}"])
        headers = ["GPUs", "img/s/GPU", "aggregate img/s", "step ms", "efficiency"]
        title = "efficiency = aggregate(N) / (N x single GPU without DDP)"
        print(common.format_table(headers, rows, title))
        note += f"; measured up to {counts[-1]}"
    name, target = "4-rank DDP efficiency, NCCL", 100 * TARGET_EFF["nccl"]
    if 4 not in points:
        return [common.check(name, None, None, note=note)]
    return [
        common.check(
            name, 100 * points[4].aggregate_img_s / (4 * points[1].aggregate_img_s), target, "%"
        )
    ]
