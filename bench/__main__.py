"""``python -m bench``: slurmlab's trainer benchmarks, each a table and PASS / MISS lines.

  throughput  the trainer's fast path vs a seed-style DataLoader/PIL/fp32 baseline, side by side
  profile     operator time by kind for both compute setups, and the speed-up bound it implies
  scaling     DDP over 1, 2, 4 local ranks (gloo on CPU; NCCL with >= 2 GPUs)
  accuracy    time to a validation accuracy with the trainer's CPU demo config
Targets are checked here only, never in the tests. Exit 1: a benchmark failed (--strict: missed).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from bench.accuracy import run_accuracy
from bench.common import cpu_count, load_line
from bench.scaling import RankSpec, run_scaling_cpu, run_scaling_cuda
from bench.throughput import ModelPlan, run_profile, run_throughput
from trainer.models import available_models
from trainer.synthetic import generate_synthetic

BENCHMARKS = ("throughput", "profile", "scaling", "accuracy")
PLANS = {  # (batch, warm-up steps, timed steps) by device and model: (full run, --quick)
    ("cpu", "simple_cnn"): ((128, 3, 20), (128, 2, 6)),
    ("cpu", "resnet50"): ((16, 1, 3), (8, 1, 2)),
    ("cuda", "simple_cnn"): ((512, 10, 50), (512, 5, 20)),
    ("cuda", "resnet50"): ((256, 10, 30), (256, 5, 10)),
    # scaling, batch per rank. On CPU one where compute dominates, as the target asks: DDP got
    # 88 % of the same ranks without it at 128 per rank, 91-103 % at 512 (README, Performance).
    ("cpu", "scaling"): ((512, 2, 6), (32, 1, 3)),  # simple_cnn
    ("cuda", "scaling"): ((256, 10, 30), (256, 5, 10)),  # resnet50
}
INT_OPTIONS = {  # name: (smallest value, help)
    "steps": (1, "timed steps (throughput and scaling)"),
    "warmup": (0, "warm-up steps (throughput and scaling)"),
    "batch": (1, "throughput batch size for every model"),
    "scaling_batch": (1, "per-rank batch of the scaling runs"),
    "workers": (0, "baseline DataLoader workers (default min(4, cores))"),
    "threads": (1, "torch CPU threads (default: usable cores)"),
    "rounds": (1, "alternating rounds per throughput path and scaling point (default 1 quick, 2)"),
    "acc_epochs": (1, "epochs of the time-to-accuracy run"),
    "acc_train": (1, "training images of the time-to-accuracy run"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser("python -m bench", description=__doc__, formatter_class=formatter)
    ap.add_argument("--quick", action="store_true", help="small step counts and data (~1 min)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    ap.add_argument("--models", default="simple_cnn,resnet50", help="throughput models")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="benchmarks to run")
    for name, (_, text) in INT_OPTIONS.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, help=text)
    ap.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    ap.add_argument("--acc-target", type=float, default=80.0, help="validation accuracy %%")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args(argv)
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    a.only = [b.strip() for b in a.only.split(",") if b.strip()]
    if unknown := [b for b in a.only if b not in BENCHMARKS]:
        ap.error(f"--only: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if bad := [m for m in a.models if m not in available_models()]:
        ap.error(f"--models: unknown model(s) {bad}; available: {available_models()}")
    for name, (low, _) in INT_OPTIONS.items():
        if (value := getattr(a, name)) is not None and value < low:
            ap.error(f"--{name.replace('_', '-')}: out of range ({value})")
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.rounds = a.rounds or (1 if a.quick else 2)
    a.workers = min(4, cpu_count()) if a.workers is None else a.workers
    return a


def plan(a: argparse.Namespace, device: str, model: str) -> ModelPlan:
    """The planned batch, warm-up and timed steps, with the command line's overrides."""
    batch, warmup, steps = PLANS[(device, model)][a.quick]
    batch = (a.scaling_batch if model == "scaling" else a.batch) or batch
    return ModelPlan(model, batch, warmup if a.warmup is None else a.warmup, a.steps or steps)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cuda, t_start, failures = a.device == "cuda", time.perf_counter(), []
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    torch.set_num_threads(threads := a.threads or cpu_count())
    cpu = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln)
    name = torch.cuda.get_device_name(device) if cuda else cpu.split(":", 1)[1].strip()
    versions = f"torch {torch.__version__} | python {platform.python_version()}"
    print(f"slurmlab bench | {versions} | device {device} ({name}) | torch threads {threads}")
    print(load_line(), flush=True)
    plans, checks = [plan(a, a.device, model) for model in a.models], []
    with tempfile.TemporaryDirectory(prefix="slurmlab-bench-") as tmp_dir:
        tmp = data = Path(tmp_dir)
        # one synthetic set, big enough that no timed throughput step crosses an epoch and that
        # every scaling rank gets a batch (the profile's loader, a batch); accuracy stages its own
        need = [1_000]
        if "throughput" in a.only:
            need += [p.batch * (p.warmup + p.steps + 1) for p in plans]
        if "scaling" in a.only:
            need += [plan(a, kind, "scaling").batch * 4 * 2 for kind in {"cpu", a.device}]
        if {"throughput", "profile", "scaling"} & set(a.only):
            n_train, t = min(50_000, max(need)), time.perf_counter()
            data = generate_synthetic(tmp / "data", n_train, 256)
            took = time.perf_counter() - t
            print(f"synthetic CIFAR-format set: {n_train} train images in {data} ({took:.1f} s)\n")

        def spec(kind: str, model: str) -> RankSpec:  # every rank's plan: batch per rank
            p = plan(a, kind, "scaling")
            return RankSpec(model, p.batch, p.warmup, p.steps, data, kind)

        def scaling() -> list[dict[str, Any]]:
            out = run_scaling_cpu(spec("cpu", "simple_cnn"), a.rounds)
            if cuda:
                print()
                out += run_scaling_cuda(spec("cuda", "resnet50"), a.rounds)
            return out

        def accuracy() -> list[dict[str, Any]]:
            n_train, n_val = a.acc_train or (2000 if a.quick else 5000), 500 if a.quick else 1000
            epochs = a.acc_epochs or (3 if a.quick else 4)
            return run_accuracy(n_train, n_val, epochs, a.acc_target, tmp / "accuracy", a.device)

        sections = {
            "throughput": lambda: run_throughput(plans, data, device, a),
            "profile": lambda: run_profile(plans, data, device, a.rounds) or [],  # no target
            "scaling": scaling,
            "accuracy": accuracy,
        }
        for name in (b for b in BENCHMARKS if b in a.only):
            print(f"=== {name} " + "=" * (90 - len(name)), flush=True)
            t0 = time.perf_counter()
            try:
                checks += sections[name]()
            except Exception as exc:
                traceback.print_exc()
                failures.append(f"{name}: {exc.__class__.__name__}: {exc}".splitlines()[0])
            print(f"({name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
    counts = {s: sum(c["status"] == s for c in checks) for s in ("PASS", "MISS", "N/A")}
    print("=== summary " + "=" * 83)
    lines = [f"{c['status']:<5} {c['name']}" for c in checks] + [f"ERROR {f}" for f in failures]
    print("\n".join(lines))
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    print(f"{summary}, {len(failures)} failed; {time.perf_counter() - t_start:.0f} s in all")
    return 1 if failures or (a.strict and counts["MISS"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
