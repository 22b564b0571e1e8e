"""Benchmark 2: DDP scaling over 1, 2 and 4 ranks on this host. This module owns one rank's
timed training (``train_rank``), starting the ranks, and the efficiency tables and checks.

Multi-rank points start with torch's launcher (``python -m torch.distributed.run --standalone
--nproc-per-node N -m bench.scaling --worker ...``); each rank joins with the trainer's
``topology_from_env`` / ``init_distributed`` and trains what ``trainer.build.assemble`` builds
(DeviceLoader sharded by rank, the trainer's optimizer, lr rule and precision, its DDP wrap)
with ``trainer.loop.train_step``. The 1-rank point runs in this process without DDP, as the
trainer does for world_size 1, so the efficiency includes the whole cost of going distributed.
Without DDP (the reference below) each rank is assembled as a single process and uses the
process group only to start and stop its timed steps with the others.

CPU / gloo, two views:

* fixed per-rank threads t (= cores // 4, at least 1), three figures per N:
  - DDP efficiency(N) = aggregate(N DDP ranks) / aggregate(the same N ranks training side by
    side without DDP, started and stopped together). Both runs share the same cores, caches and
    memory bandwidth at the same time, so the ratio is what going distributed costs: gradient
    all-reduce and waiting for the slowest rank. This is the target's metric.
  - cores deliver(N) = aggregate(N ranks without DDP) / single(1 rank alone, t threads): what
    this host gives N busy ranks against one rank with the machine to itself. Below
    min(N, cores / t) because a core runs slower while the others are busy (shared caches,
    memory bandwidth, boost clocks) and, with fewer than N x t cores, the ranks time-share.
    Nodes of a real cluster do not share cores, so this part is the emulation's, not DDP's.
  - efficiency vs ideal(N) = aggregate(N DDP ranks) / (min(N, cores / t) x single): the
    classic figure, the product of the two above.
* constant thread budget (the host's cores split between the ranks): efficiency(N) =
  aggregate(N) / single(1 rank, all cores). Same hardware, more ranks: it also contains how
  well one process uses several cores (intra-op threading), so it can exceed 100 %.

CUDA / NCCL: one rank per GPU (ResNet50, bf16, channels_last); needs at least 2 GPUs.

Noise: every point is run ``rounds`` times, the points alternating in order (1, 2, 4, then
4, 2, 1, ...), and each keeps its fastest round (bench.common.best_of_rounds). On a shared host
a slow round is another process's doing; numerator and denominator are treated alike.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bench.common import (
    REPO,
    Check,
    best_of_rounds,
    child_env,
    cpu_count,
    forever,
    format_checks,
    format_table,
    load_line,
    sync,
)
from trainer.build import assemble
from trainer.config import load_config
from trainer.data import read_cifar_dir
from trainer.distributed import (
    Topology,
    cleanup_distributed,
    init_distributed,
    select_device,
    topology_from_env,
)
from trainer.loop import train_step

TARGET_EFF = {"gloo": 0.90, "nccl": 0.95}
RANK_COUNTS = (1, 2, 4)
Key = tuple[int, int, bool]  # (ranks, threads per rank, DDP)


@dataclass(frozen=True)
class RankSpec:
    """What every rank of a point trains: ``warmup`` then ``steps`` timed steps."""

    model: str
    batch: int  # per rank
    warmup: int
    steps: int
    batch_dir: Path
    device_type: str  # "cpu" (gloo) | "cuda" (NCCL, one GPU per rank)


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
def _device(spec: RankSpec, topo: Topology) -> torch.device:
    return select_device(topo) if spec.device_type == "cuda" else torch.device("cpu")


def train_rank(spec: RankSpec, topo: Topology, backend: str, *, ddp: bool = True) -> RankResult:
    """Train ``spec`` as ``topo``'s rank (process group already up when the world is > 1);
    returns this rank's timing of the timed steps. With ``ddp`` False the ranks train
    independently (each assembled as a single process: no gradient all-reduce) and use the
    process group only to start and stop their timed steps together: the hardware reference
    for the same number of DDP ranks."""
    device = _device(spec, topo)
    cfg = load_config(None, [f"model={spec.model}", f"batch_size={spec.batch}"])
    alone = not (ddp and topo.is_distributed)
    t = assemble(
        cfg,
        topology_from_env({}) if alone else topo,
        device,
        "none" if alone else backend,
        read_cifar_dir(spec.batch_dir),
    )
    batches = forever(t.train_loader)
    for _ in range(spec.warmup):
        train_step(t, *next(batches))
    sync(device)
    if topo.is_distributed:
        dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(spec.steps):
        train_step(t, *next(batches))
    sync(device)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if topo.is_distributed:
        dist.barrier()
    threads = torch.get_num_threads()
    return RankResult(topo.rank, topo.world_size, threads, spec.batch, spec.steps, elapsed, cpu)


def _worker(argv: list[str]) -> int:
    """One rank started by torchrun, whose variables (RANK, WORLD_SIZE, MASTER_*) say its place;
    writes its RankResult to OUT/rank<r>.json."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--no-ddp", action="store_true", help="train without DDP (reference)")
    for name in ("model", "data", "out", "device"):
        ap.add_argument(f"--{name}", required=True)
    for name in ("batch", "warmup", "steps", "threads"):
        ap.add_argument(f"--{name}", type=int, required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    spec = RankSpec(a.model, a.batch, a.warmup, a.steps, Path(a.data), a.device)
    topo = topology_from_env()
    requested = "nccl" if a.device == "cuda" else "gloo"
    backend = init_distributed(topo, _device(spec, topo), requested, timeout_s=300)
    try:
        result = train_rank(spec, topo, backend, ddp=not a.no_ddp)
    finally:
        cleanup_distributed()
    (Path(a.out) / f"rank{topo.rank}.json").write_text(json.dumps(asdict(result)))
    return 0


# ---------------------------------------------------------------- launching
def launch(
    spec: RankSpec, world: int, threads: int, *, ddp: bool = True, timeout: float = 300.0
) -> list[RankResult]:
    """Run ``world`` ranks of ``spec`` with ``threads`` threads each, in DDP or (``ddp`` False)
    training independently side by side; world 1 runs in this process without DDP."""
    if world == 1:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return [train_rank(spec, topology_from_env({}), "none")]
        finally:
            torch.set_num_threads(old)
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        options = dict(
            model=spec.model,
            data=spec.batch_dir,
            device=spec.device_type,
            batch=spec.batch,
            warmup=spec.warmup,
            steps=spec.steps,
            threads=threads,
            out=tmp,
        )
        cmd = [
            *(*torchrun, f"--nproc-per-node={world}", "-m", "bench.scaling", "--worker"),
            *(f"--{name}={value}" for name, value in options.items()),
            *([] if ddp else ["--no-ddp"]),
        ]
        env = child_env(spec.device_type, OMP_NUM_THREADS=str(threads))
        log = Path(tmp) / "torchrun.log"
        code = _run_logged(cmd, env, log, timeout)
        if code != 0:
            tail = log.read_text(errors="replace")[-6000:]
            raise RuntimeError(f"{world}-rank DDP run failed (torchrun exit {code}):\n{tail}")
        return [
            RankResult(**json.loads((Path(tmp) / f"rank{r}.json").read_text()))
            for r in range(world)
        ]


def _run_logged(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> int | None:
    """Exit status of ``cmd`` (stdout and stderr to ``log``); None when it ran past ``timeout``
    and was stopped (SIGTERM: torchrun stops its workers, then SIGKILL)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return None


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


def best_points(
    keys: list[Key], rounds: int, run: Callable[[int, int, bool], Point]
) -> dict[Key, Point]:
    """Every point's fastest run (highest aggregate img/s) of ``rounds`` alternating rounds."""
    return best_of_rounds(keys, rounds, lambda key: run(*key), score=lambda p: p.aggregate_img_s)


def _measure(spec: RankSpec, keys: list[Key], rounds: int) -> dict[Key, Point]:
    return best_points(keys, rounds, lambda n, t, ddp: _point(launch(spec, n, t, ddp=ddp)))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# ---------------------------------------------------------------- CPU / gloo
def run_scaling_cpu(spec: RankSpec, *, cores: int | None = None, rounds: int = 1) -> dict[str, Any]:
    """Both CPU views over RANK_COUNTS (see the module's docstring); prints tables and checks."""
    cores = cores or cpu_count()
    t_fixed = max(1, cores // 4)
    print(
        f"DDP scaling, CPU / gloo, {spec.model}, per-rank batch {spec.batch}, {spec.steps} timed "
        f"steps after {spec.warmup} warm-up, best of {rounds} alternating round(s); {cores} "
        "usable cores"
    )
    cache = _measure(
        spec,
        [(n, t_fixed, True) for n in RANK_COUNTS]
        + [(n, t_fixed, False) for n in RANK_COUNTS if n > 1]  # 1 rank never uses DDP
        + [(n, max(1, cores // n), True) for n in RANK_COUNTS],
        rounds,
    )
    print(load_line())
    fixed = _fixed_threads_view(cache, cores, t_fixed)
    eff_budget = _budget_view(cache, cores)
    ideal4 = min(4, max(1, cores // t_fixed))
    print(
        "How to read it: the ranks of one host share its cores, its caches and its memory "
        "bandwidth, and a core runs slower while the others are busy; nodes of a real cluster "
        "do not share them. So view (a) separates two things. 'DDP eff' is what going "
        "distributed costs - gradient all-reduce and waiting for the slowest rank - measured "
        "against the same ranks training side by side without DDP, on the same cores at the "
        "same time: the target's figure. 'cores deliver' is the host's own limit: "
        f"{fixed['cores_deliver'][4]:.2f}x of an ideal {ideal4}x for 4 ranks without any "
        "communication. 'eff vs ideal' is the product of both, the classic figure against one "
        "rank alone."
    )
    checks = [
        Check(
            "4-rank DDP efficiency, CPU/gloo, vs the same 4 ranks without DDP side by side",
            100 * fixed["efficiency_ddp"][4],
            100 * TARGET_EFF["gloo"],
            unit="%",
        ),
        Check(
            f"4-rank DDP efficiency, CPU/gloo, vs {ideal4} x one rank alone (includes the "
            "host's cores slowing when all are busy)",
            100 * fixed["efficiency_wall"][4],
            100 * TARGET_EFF["gloo"],
            unit="%",
        ),
    ]
    print(format_checks(checks))
    return {
        "backend": "gloo",
        "model": spec.model,
        "cores": cores,
        "threads_per_rank_fixed": t_fixed,
        "points": [
            dict(asdict(p), ddp=key[2], img_per_cpu_s=p.img_per_cpu_s) for key, p in cache.items()
        ],
        "efficiency_ddp": fixed["efficiency_ddp"],
        "efficiency_wall": fixed["efficiency_wall"],
        "efficiency_cpu_s": fixed["efficiency_cpu_s"],
        "cores_deliver": fixed["cores_deliver"],
        "efficiency_budget": eff_budget,
        "checks": [c.to_dict() for c in checks],
    }


def _fixed_threads_view(
    cache: dict[Key, Point], cores: int, t_fixed: int
) -> dict[str, dict[int, float]]:
    """View (a): print its table; returns its efficiencies by rank count."""
    single = cache[(1, t_fixed, True)]
    eff: dict[str, dict[int, float]] = {
        "efficiency_ddp": {},  # DDP ranks / the same ranks training without DDP
        "efficiency_wall": {},  # DDP ranks / (ideal x one rank alone)
        "efficiency_cpu_s": {},
        "cores_deliver": {},  # ranks without DDP / one rank alone: what the cores deliver
    }
    rows = []
    for n in RANK_COUNTS:
        p, solo = cache[(n, t_fixed, True)], cache[(n, t_fixed, n == 1)]
        possible = min(n, max(1, cores // t_fixed))
        eff["efficiency_ddp"][n] = p.aggregate_img_s / solo.aggregate_img_s
        eff["efficiency_wall"][n] = p.aggregate_img_s / (possible * single.aggregate_img_s)
        eff["efficiency_cpu_s"][n] = p.img_per_cpu_s / single.img_per_cpu_s
        eff["cores_deliver"][n] = solo.aggregate_img_s / single.aggregate_img_s
        over = " (oversubscribed)" if n * t_fixed > cores else ""
        rows.append(
            [
                *(n, t_fixed, f"{n * t_fixed}{over}", f"{p.aggregate_img_s:,.1f}"),
                *(f"{p.step_ms:.0f}", f"{p.cores_used:.2f}", f"{solo.aggregate_img_s:,.1f}"),
                _pct(eff["efficiency_ddp"][n]),
                f"{eff['cores_deliver'][n]:.2f}x of {possible}x",
                _pct(eff["efficiency_wall"][n]),
                _pct(eff["efficiency_cpu_s"][n]),
            ]
        )
    headers = ["ranks", "thr/rank", "threads", "DDP img/s", "step ms", "cores used"]
    headers += ["no-DDP img/s", "DDP eff", "cores deliver", "eff vs ideal", "eff (CPU-s)"]
    print(
        format_table(
            headers,
            rows,
            title=f"(a) fixed {t_fixed} thread(s) per rank. no-DDP = the same ranks training "
            "side by side without gradient all-reduce; DDP eff = DDP / no-DDP; cores deliver = "
            f"no-DDP / one rank alone, against ideal min(N, {cores} cores / {t_fixed} thr); "
            "eff vs ideal = DDP / (ideal x one rank alone); eff (CPU-s) = images per CPU-second "
            "of all ranks / the same for one rank alone",
        )
    )
    return eff


def _budget_view(cache: dict[Key, Point], cores: int) -> dict[int, float]:
    """View (b): print its table; returns the efficiency by rank count."""
    base = cache[(1, cores, True)]
    rows, eff = [], {}
    for n in RANK_COUNTS:
        t = max(1, cores // n)
        p = cache[(n, t, True)]
        eff[n] = p.aggregate_img_s / base.aggregate_img_s
        note = f"{n * t} threads on {cores} cores" + (" (oversubscribed)" if n * t > cores else "")
        row = [n, t, f"{p.aggregate_img_s:,.1f}", f"{p.step_ms:.0f}", f"{p.cores_used:.2f}"]
        rows.append([*row, _pct(eff[n]), note])
    headers = ["ranks", "thr/rank", "aggregate img/s", "step ms", "cores used", "efficiency"]
    print(
        format_table(
            [*headers, "budget"],
            rows,
            title=f"(b) constant budget of {cores} threads; efficiency = aggregate(N) / "
            f"single(1 rank x {cores} threads); can exceed 100 % when one process uses "
            "its threads less well than separate ranks do",
        )
    )
    return eff


# ---------------------------------------------------------------- CUDA / NCCL
def run_scaling_cuda(spec: RankSpec, *, rounds: int = 1) -> dict[str, Any]:
    """One rank per GPU over RANK_COUNTS (as far as the GPUs go); prints the table and check."""
    n_gpu = torch.cuda.device_count()
    counts = [n for n in RANK_COUNTS if n <= n_gpu]
    if n_gpu < 2:
        why = (
            f"NCCL scaling needs >= 2 GPUs; this machine has {n_gpu}. NCCL refuses two ranks "
            "on one GPU, and time-sharing one GPU would measure contention, not scaling."
        )
        check = Check("4-rank DDP efficiency, NCCL", None, None, note=why)
        print(format_checks([check]))
        return {"backend": "nccl", "gpus": n_gpu, "skipped": why, "checks": [check.to_dict()]}
    print(
        f"DDP scaling, CUDA / NCCL, {spec.model} bf16 channels_last, per-GPU batch {spec.batch}, "
        f"{spec.steps} timed steps after {spec.warmup} warm-up, best of {rounds} round(s); "
        f"{n_gpu} GPUs"
    )
    best = _measure(spec, [(n, 4, True) for n in counts], rounds)
    points = {n: best[(n, 4, True)] for n in counts}
    eff = {n: p.aggregate_img_s / (n * points[1].aggregate_img_s) for n, p in points.items()}
    rows = [
        [n, f"{p.per_rank_img_s:,.0f}", f"{p.aggregate_img_s:,.0f}", f"{p.step_ms:.1f}", _pct(e)]
        for (n, p), e in zip(points.items(), eff.values(), strict=True)
    ]
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
        note = f"only {n_gpu} GPUs; measured up to {counts[-1]}"
        check = Check("4-rank DDP efficiency, NCCL", None, None, note=note)
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
