"""``python -m bench.gpu_check``: one prepared run that proves the trainer's GPU path on a bare
machine (one H100-class GPU, PyTorch, no network, Docker or Slurm) in under 8 minutes.

  trainer     a world-size-1 process group of the trainer's backend, its collectives checked;
              the trainer end to end (torchrun, synthetic data), checkpoints, a resumed run
  throughput  ResNet50 and SimpleCNN: the fast path vs the straightforward loop, MFU
  ablation    bf16, channels_last, GPU-resident loading off in turn, compile on; peak memory
  ddp         2 ranks with DDP vs the same ranks without (needs >= 2 GPUs)

--rehearse runs it all on CPU (gloo, tiny sizes). A section's error is recorded, not fatal.
Writes gpu_check.json and gpu_check.txt under --out (default $OUT, else out/gpu_check). What a
bare torch lacks is installed from .whl/ (filled by --fetch-wheels on a host with PyPI).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
# what trainer/ and bench/ import at module import time, and a bare torch install may lack
DEPS = {"yaml": "pyyaml", "pydantic": "pydantic", "psutil": "psutil", "hostlist": "python-hostlist"}
SDIST_ONLY = ("python-hostlist",)  # pure Python, published without wheels: built here
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
# bench.throughput imports torchvision for its baseline only; where it is missing, this stand-in
# lets bench import (here and in DDP ranks), and the baseline fails, recorded, when it runs
TORCHVISION_STUB = '''"""Written by bench/gpu_check.py: torchvision is not installed here."""
import sys, types
def __getattr__(name):
    if name.startswith("__"):  # hasattr(module, "__file__") and the like: a plain module's answer
        raise AttributeError(name)
    raise ModuleNotFoundError("torchvision is not installed (bench/gpu_check.py stand-in)")
class CIFAR10:
    def __init__(self, *args, **kwargs):
        __getattr__("CIFAR10")
transforms, datasets = types.ModuleType("transforms"), types.ModuleType("datasets")
transforms.__getattr__, datasets.CIFAR10 = __getattr__, CIFAR10
sys.modules.update({"torchvision.transforms": transforms, "torchvision.datasets": datasets})
'''
# trainer: (model, batch, steps per epoch); throughput, ablation, ddp: (model, batch, warm-up
# steps, timed steps); data: the synthetic set (train, val)
PLANS: dict[str, dict[str, Any]] = {
    "cuda": {
        "trainer": ("resnet50", 256, 150),
        "throughput": [("simple_cnn", 512, 10, 50), ("resnet50", 256, 10, 30)],
        "ablation": ("resnet50", 256, 10, 30),
        "ddp": ("resnet50", 256, 10, 30),
        "data": (38_400, 2_560),
        "rounds": 2,
    },
    "cpu": {
        "trainer": ("simple_cnn", 32, 8),
        "throughput": [("simple_cnn", 32, 1, 2), ("resnet50", 4, 1, 1)],
        "ablation": ("simple_cnn", 32, 1, 2),
        "ddp": ("simple_cnn", 16, 1, 2),
        "data": (320, 64),
        "rounds": 1,
    },
}
COSTS = {"trainer": 60, "throughput": 45, "ablation": 20, "compile": 150, "ddp": 60}  # GPU, s
ABLATION = {  # overrides of the trainer's default fast path: bf16, NHWC, data on the device
    "reference (trainer default)": [],
    "bf16 off (fp32, TF32 matmuls)": ["precision=fp32"],
    "channels_last off (NCHW)": ["channels_last=false"],
    "GPU-resident loading off (DataLoader)": ["loader=dataloader"],
    "compile on": ["compile=true"],  # off by default: turned on, one compile instead of four
}
SEED_LINE = re.compile(r"^(?:Epoch[: ]|Resumed from |Final: |Device: |Topology: ).*$", re.M)
T0 = time.monotonic()


class Skip(Exception):
    """A section or row that cannot run here; the message says why."""


def say(msg: str) -> None:
    stamp = f"{time.strftime('%H:%M:%S')} +{time.monotonic() - T0:.1f}s"
    print(f"[gpu_check {stamp}] {msg}", flush=True)


# ---------------------------------------------------------------- dependencies
def loadable(
    wheel: str, here: tuple[int, ...] = sys.version_info[:2], machine: str = platform.machine()
) -> bool:
    """Whether this CPython (Linux) loads a wheel, by its file name's python, ABI, platform tags."""
    pythons, abi, plat = wheel.removesuffix(".whl").split("-")[-3:]
    if plat != "any" and not ("linux" in plat and machine in plat):
        return False
    for tag in pythons.split("."):
        cp = (int(tag[2]), int(tag[3:])) if re.fullmatch(r"cp\d\d+", tag) else None
        if tag in ("py3", "py2.py3") or cp == here or (abi == "abi3" and cp and cp <= here):
            return True
    return False


def ensure_deps(deps: dict[str, str] = DEPS, wheels: Path = WHEELS) -> dict[str, str]:
    """Install each module of ``deps`` this interpreter cannot import from the wheel folder into
    a temporary directory, put first on sys.path and on PYTHONPATH (for torchrun and ranks).
    Without pip the loadable wheels are unpacked: a wheel is a zip laid out for site-packages.
    Returns each module's state: present, from .whl, missing (or stand-in: torchvision)."""
    missing = [m for m in deps if importlib.util.find_spec(m) is None]
    stub = importlib.util.find_spec("torchvision") is None
    states = {m: "missing" if m in missing else "present" for m in deps}
    if not (missing and wheels.is_dir()) and not stub:
        return states
    target = Path(tempfile.mkdtemp(prefix="gpu-check-deps-"))
    if missing and wheels.is_dir() and importlib.util.find_spec("pip"):
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--target", str(target)]
        subprocess.run([*pip, "--find-links", str(wheels), *(deps[m] for m in missing)])
    elif missing and wheels.is_dir():
        for wheel in sorted(p for p in wheels.glob("*.whl") if loadable(p.name)):
            zipfile.ZipFile(wheel).extractall(target)
    if stub:
        (target / "torchvision").mkdir()
        (target / "torchvision" / "__init__.py").write_text(TORCHVISION_STUB)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.getenv("PYTHONPATH")]))
    importlib.invalidate_caches()
    states |= {m: "from .whl" for m in missing if importlib.util.find_spec(m)}
    return states | ({"torchvision": "stand-in"} if stub else {})


def fetch_wheels(dest: Path = WHEELS) -> int:
    """Download DEPS' wheels (with their dependencies) at the trainer image's pinned versions
    for every CPython of PYTHONS on x86_64 Linux into ``dest``; print what and how much."""
    text = (REPO / "images/requirements-trainer.txt").read_text()
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)", text, re.M))
    wanted = {d: f"{d}=={pins[d]}" if d in pins else d for d in DEPS.values()}
    pip, failed = [sys.executable, "-m", "pip"], []
    binary = [w for d, w in wanted.items() if d not in SDIST_ONLY]
    for version in PYTHONS:
        args = ["download", "-q", "--only-binary=:all:", f"--python-version={version}"]
        args += ["--implementation=cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(dest)]
        if subprocess.run([*pip, *args, *binary]).returncode:
            failed.append(f"CPython {version}")
    built = [wanted[d] for d in SDIST_ONLY]
    if subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(dest), *built]).returncode:
        failed += built
    files = sorted(dest.glob("*.whl"))
    mib = sum(f.stat().st_size for f in files) / 2**20
    print("\n".join(f"  {f.name}" for f in files))
    print(f"{dest}: {len(files)} wheels, {mib:.1f} MiB (a device run carries 64 MiB in all)")
    print(f"FAILED: {', '.join(failed)}" if failed else "every Python version fetched")
    return 1 if failed or mib > 48 else 0


# ---------------------------------------------------------------- sections
class Context:
    """What every section gets: arguments, device, sizes, scratch space, the target checks."""

    def __init__(self, a: argparse.Namespace, device: Any, tmp: Path) -> None:
        self.a, self.device, self.tmp, self.out = a, device, tmp, Path(a.out)
        self.cuda, self.kind, self.plan = device.type == "cuda", device.type, PLANS[device.type]
        self.backend = "nccl" if self.cuda else "gloo"
        self.workers = min(4, len(os.sched_getaffinity(0))) if self.cuda else 0
        self.batch_dir = tmp / "data/synthetic/cifar-10-batches-py"  # generate_synthetic's
        self.checks: list[dict[str, Any]] = []

    def need(self, what: str) -> None:
        """Skip what would not fit the budget (GPU costs; a rehearsal's are far below)."""
        left = self.a.budget_s - (time.monotonic() - T0)
        if self.cuda and left < COSTS[what]:
            raise Skip(f"budget: {left:.0f} s left, {what} needs ~{COSTS[what]} s")


def trainer_section(c: Context, rec: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist

    from bench import common
    from trainer.checkpoint import list_checkpoints
    from trainer.distributed import all_ok, on_main
    from trainer.metrics import read_metrics
    from trainer.topology import topology_from_env

    # At world size 1 the trainer makes no process group (nothing to reduce), so one is made
    # here as trainer/distributed.py makes it, and its collectives are checked: exact in fp32.
    opts = {"device_id": c.device} if c.cuda else {}
    dist.init_process_group(c.backend, store=dist.HashStore(), rank=0, world_size=1, **opts)
    try:
        world, x = dist.get_world_size(), torch.arange(1 << 22, device=c.device, dtype=torch.float)
        y = x * (dist.get_rank() + 1)
        dist.all_reduce(y)
        err = (y - x * world * (world + 1) / 2).abs().max().item()
        votes = all_ok(True, c.device), all_ok(False, c.device)
        said = on_main(topology_from_env({}), lambda: "from rank 0")
        rec["process_group"] = {"backend": dist.get_backend(), "world_size": world}
        rec["process_group"] |= {"all_reduce_max_err": err, "all_reduce_ok": err == 0}
        rec["process_group"] |= {"all_ok_vote": votes == (True, False), "on_main": said}
    finally:
        dist.destroy_process_group()
    model, batch, steps = c.plan["trainer"]
    items = f"model={model} dataset=synthetic data_dir={c.tmp / 'data'} epochs=2 plot=false "
    items += "synthetic_train={} synthetic_val={} ".format(*c.plan["data"])
    items += f"batch_size={batch} max_steps_per_epoch={steps} checkpoint_every_steps={steps // 2} "
    items += f"keep_checkpoints=0 warmup_epochs=0.5 log_every={max(1, steps // 3)} "
    items += f"backend={c.backend}"

    def train(name: str, *extra: str) -> dict[str, Any]:
        over = [*items.split(), f"output_dir={c.tmp / name}", *extra]
        say(f"trainer, {name} run: torchrun -m trainer {' '.join(over)}")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
        t0 = time.monotonic()
        with common.child_environ(c.kind):
            limit = max(60, c.a.budget_s)  # a hung run cannot take the others' time
            argv = [*cmd, "-m", "trainer", *over]
            run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=limit)
        (c.out / f"trainer_{name}.log").write_text(run.stdout + run.stderr)
        metrics = read_metrics(c.tmp / name / "metrics.jsonl")
        epochs = [r for r in metrics if r["kind"] == "epoch"]
        done = {"rc": run.returncode, "seconds": time.monotonic() - t0}
        done["stderr"] = run.stderr[-1500:]
        done["steps"] = max((r.get("step", 0) for r in metrics), default=0)
        done["epoch_img_s"] = [r["img_per_s"] for r in epochs]
        done["val_acc"] = [r["val_acc"] for r in epochs]
        return done | {"lines": SEED_LINE.findall(run.stdout)[:40]}

    runs = rec["runs"] = {"first": train("first")}
    first = runs["first"]
    if first["rc"]:
        raise RuntimeError(f"trainer exited {first['rc']}: {first['stderr'][-300:]}")
    # resumed mid-epoch 1 from the first run's checkpoint: the loader's position counts too
    at = steps + steps // 2
    ckpt = next(k.path for k in list_checkpoints(c.tmp / "first/checkpoints") if k.step == at)
    runs["resumed"] = resumed = train("resumed", f"resume={ckpt}")
    said = re.findall(r"^Resumed from .* step (\d+)\)$", "\n".join(resumed["lines"]), re.M)
    finals = [list_checkpoints(c.tmp / run / "checkpoints")[-1].path for run in runs]
    a, b = (torch.load(p, weights_only=True, map_location="cpu")["model"] for p in finals)
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    rec["resume"] = {"checkpoint_step": at, "resumed_at_step": int(said[0]) if said else None}
    rec["resume"] |= {"final_step": resumed["steps"], "expected_final_step": 2 * steps}
    rec["resume"]["weights_max_abs_diff_vs_uninterrupted"] = diff


def throughput_section(c: Context, rec: dict[str, Any]) -> None:
    import torch

    from bench import common
    from bench.throughput import (
        GPU_PEAKS_BF16,
        TARGET_DATA_WAIT,
        TARGET_MFU,
        TARGET_SPEEDUP,
        ModelPlan,
        count_flops,
        run_path,
    )
    from trainer.models import build_model

    name = torch.cuda.get_device_name(c.device) if c.cuda else "cpu"
    # dense bf16 peaks by a substring of the device name; the first match wins (A100 before A10)
    peaks = GPU_PEAKS_BF16 | {"B200": 2250e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12}
    peak = next((f for key, f in (peaks | {"A10": 125e12}).items() if key in name.upper()), None)
    note = f"{name}: {peak / 1e12:.0f} TFLOP/s dense bf16 (spec)" if peak else f"{name}: no peak"
    rec |= {"device": name, "peak_flops": peak, "peak_note": note, "rows": []}
    a = argparse.Namespace(compile=False, workers=c.workers)  # what run_path reads
    for model, batch, warmup, steps in c.plan["throughput"]:
        c.need("throughput")
        plan = ModelPlan(model, batch, warmup, steps)
        say(f"throughput: {model}, batch {batch}: fast path vs baseline")

        def attempt(path: str, plan: ModelPlan = plan) -> dict[str, Any]:
            try:
                return run_path(plan, path, c.batch_dir, c.device, a)
            except Exception as exc:  # e.g. the baseline without torchvision: keep the other
                return {"model": plan.model, "path": path, "img_s": 0.0, "error": repr(exc)}

        best = common.best_of_rounds(
            ("fast", "baseline"), c.plan["rounds"], attempt, lambda r: r["img_s"]
        )
        flops = count_flops(build_model(model).to(c.device), c.device)["train"]
        for r in best.values():
            r |= {"mfu": r["img_s"] * flops / peak if peak else None, "train_flops": flops}
            r["peak_mem_mib"] = r["peak_mem_bytes"] / 2**20 if "peak_mem_bytes" in r else None
        rec["rows"] += best.values()
        fast, base = best["fast"], best["baseline"]
        speedup = fast["img_s"] / base["img_s"] if base["img_s"] else None
        check = f"fast/baseline img/s, {model}, batch {batch}, {c.kind}"
        c.checks.append(
            common.check(check, speedup, TARGET_SPEEDUP[c.kind], "x", note=base.get("error", ""))
        )
        wait = 100 * fast["data_wait"] if "data_wait" in fast else None
        check, limit = f"fast-path data wait, {model}", 100 * TARGET_DATA_WAIT
        c.checks.append(common.check(check, wait, limit, "%", lower=True))
        if model == "resnet50":
            mfu, target = (100 * fast["mfu"], 100 * TARGET_MFU) if fast["mfu"] else (None, None)
            check = f"ResNet50 MFU, bf16, {name}"
            c.checks.append(common.check(check, mfu, target, "%", note=note))


def ablation_section(c: Context, rec: dict[str, Any]) -> None:
    from bench import common
    from bench.throughput import timed_loop
    from trainer.build import assemble
    from trainer.config import load_config
    from trainer.data import read_cifar_dir
    from trainer.loop import train_step
    from trainer.topology import topology_from_env

    model, batch, warmup, steps = c.plan["ablation"]
    rec |= {"model": model, "batch": batch, "warmup": warmup, "steps": steps, "rows": {}}
    data, ref = read_cifar_dir(c.batch_dir), None
    for row, items in ABLATION.items():
        t0, compiled = time.monotonic(), "compile=true" in items
        try:
            c.need("compile" if compiled else "ablation")
            if compiled and not c.cuda and not (shutil.which("g++") or shutil.which("clang++")):
                raise Skip("no C++ compiler here: inductor's CPU backend needs one")
            say(f"ablation: {row}")
            base = [f"model={model}", f"batch_size={batch}", f"num_workers={c.workers}"]
            cfg = load_config(None, base + items)
            with common.peak_memory(c.device) as peak:
                t = assemble(cfg, topology_from_env({}), c.device, "none", data)
                batches = common.forever(t.train_loader)
                step = functools.partial(train_step, t)
                timed = timed_loop(functools.partial(next, batches), step, c.device, warmup, steps)
                batches.close()
            (total, wait), img_s = timed, batch * steps / timed[0]
            ref = ref or img_s  # the first row's
            got = {"img_s": img_s, "step_ms": 1000 * total / steps, "data_wait": wait / total}
            got |= {"peak_mem_mib": peak[0] / 2**20, "setup_s": time.monotonic() - t0 - total}
            # img/s with the feature over img/s without: above 1, the feature pays
            rec["rows"][row] = got | {"feature_gain_x": img_s / ref if compiled else ref / img_s}
        except Skip as why:
            rec["rows"][row] = {"skipped": str(why)}
        except Exception as exc:
            rec["rows"][row] = {"error": repr(exc), "traceback": traceback.format_exc()[-1500:]}


def ddp_section(c: Context, rec: dict[str, Any]) -> None:
    import torch

    from bench import common
    from bench.scaling import TARGET_EFF, RankSpec, measure

    gpus = torch.cuda.device_count() if c.cuda else 0
    if c.cuda and gpus < 2:
        raise Skip(f"{gpus} GPU: NCCL needs a GPU per rank (it refuses two ranks on one GPU)")
    c.need("ddp")
    model, batch, warmup, steps = c.plan["ddp"]
    spec, threads = RankSpec(model, batch, warmup, steps, c.batch_dir, c.kind), 4 if c.cuda else 1
    say(f"ddp: 2 ranks ({c.backend}) with and without DDP, {model}, batch {batch} per rank")
    points = measure(spec, [(2, threads, True), (2, threads, False)], c.plan["rounds"])
    ddp, alone = points[(2, threads, True)], points[(2, threads, False)]
    eff = ddp.aggregate_img_s / alone.aggregate_img_s
    rec |= {"backend": c.backend, "ranks": 2, "efficiency": eff, "step_ms": ddp.step_ms}
    rec |= {"ddp_img_s": ddp.aggregate_img_s, "no_ddp_img_s": alone.aggregate_img_s}
    name = f"2-rank DDP efficiency, {c.backend}, vs the same ranks without DDP"
    c.checks.append(common.check(name, 100 * eff, 100 * TARGET_EFF[c.backend], "%"))


SECTIONS: dict[str, Callable[[Context, dict[str, Any]], None]] = {
    "trainer": trainer_section,
    "throughput": throughput_section,
    "ablation": ablation_section,
    "ddp": ddp_section,
}


# ---------------------------------------------------------------- the run and its report
def render(report: dict[str, Any]) -> str:
    """The report as text: facts, then a table per section, then the targets."""
    from bench.common import format_table

    def table(title: str, rows: list[dict[str, Any]], columns: str) -> str:
        """``columns``: "key:format ...", a format spec as format() takes it (.60: 60 chars)."""
        cols = [col.partition(":")[::2] for col in columns.split()]
        cells = [["-" if r.get(k) is None else format(r[k], f) for k, f in cols] for r in rows]
        return format_table([k.replace("_", " ") for k, _ in cols], cells, title)

    sections, tr = report["sections"], report["sections"].get("trainer", {})
    runs = [{"run": n} | r for n, r in tr.get("runs", {}).items()]
    for r in runs:
        r |= {k: r[k][-1] for k in ("epoch_img_s", "val_acc") if r[k]}
    rows = [{"section": n} | s for n, s in sections.items()]
    parts = [" | ".join(f"{k} {v}" for k, v in (report["env"] | report["deps"]).items())]
    parts.append(table("Sections", rows, "section status seconds:.0f reason:.70 error:.70"))
    columns = "run rc steps seconds:.1f epoch_img_s:,.0f val_acc:.2f"
    parts.append(table("Trainer (img/s, val acc: the last epoch's)", runs, columns))
    lines = [json.dumps(tr.get(k)) for k in ("process_group", "resume")]
    lines += [x for r in runs for x in r["lines"] if not x.startswith(("Epoch: ", "Topology"))]
    parts.append("\n".join(lines))
    rows = sections.get("throughput", {}).get("rows", [])
    columns = "model path batch img_s:,.1f step_ms:.1f data_wait:.1% peak_mem_mib:,.0f mfu:.1% "
    columns += "error:.50"
    parts.append(table("Throughput, best of alternating rounds", rows, columns))
    rows = [{"setup": n} | r for n, r in sections.get("ablation", {}).get("rows", {}).items()]
    columns = "setup img_s:,.1f step_ms:.1f data_wait:.1% peak_mem_mib:,.0f feature_gain_x:.2f "
    title = "Ablation: feature gain = img/s with the feature / without"
    parts.append(table(title, rows, columns + "skipped:.50 error:.50"))
    parts.append(table("Targets", report["checks"], "status value:.3g target:.3g name"))
    return "\n\n".join(parts) + "\n"


def write(out: Path, report: dict[str, Any]) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    try:
        text = render(report)
    except Exception:  # the JSON holds it all; the table is a convenience
        text = f"(no table: {traceback.format_exc(limit=1)})\n"
    (out / "gpu_check.txt").write_text(text)


def run_sections(c: Context, report: dict[str, Any], out: Path) -> None:
    """Every section in turn; each one's error or reason to skip goes in its record."""
    for name, section in SECTIONS.items():
        rec: dict[str, Any] = {"status": "running"}
        report["sections"][name], t0 = rec, time.monotonic()
        write(out, report)  # a run killed from outside still says where it was
        say(f"=== {name}")
        try:
            if name not in c.a.only:
                raise Skip("not in --only")
            section(c, rec)
            rec["status"] = "ok"
        except Skip as why:
            rec |= {"status": "skipped", "reason": str(why)}
        except Exception as exc:
            rec |= {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
            rec["traceback"] = traceback.format_exc()[-3000:]
        rec["seconds"] = time.monotonic() - t0
        say(f"{name}: {rec['status']} in {rec['seconds']:.1f} s {rec.get('error', '')}")


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(
        "python -m bench.gpu_check", description=__doc__, formatter_class=raw
    )
    ap.add_argument("--rehearse", action="store_true", help="on CPU: gloo, tiny sizes (the test)")
    ap.add_argument("--out", default=os.getenv("OUT") or "out/gpu_check", help="report folder")
    ap.add_argument("--budget-s", type=float, default=420.0, help="sections start within this")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    ap.add_argument("--fetch-wheels", action="store_true", help=f"fill {WHEELS} from PyPI")
    a = ap.parse_args(argv)
    if a.fetch_wheels:
        return fetch_wheels()
    a.only = a.only.split(",")
    if unknown := set(a.only) - set(SECTIONS):
        ap.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    deps = ensure_deps()  # before anything imports trainer/ or bench.common
    # torch may come without numpy, which the trainer needs; its wheels are too big to carry
    deps["numpy"] = "present" if importlib.util.find_spec("numpy") else "missing (not carried)"
    import torch

    if not a.rehearse and not torch.cuda.is_available():
        print("error: no CUDA device here (--rehearse runs the check on CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu") if a.rehearse else torch.device("cuda", 0)
    env = {"mode": "rehearse (cpu, gloo)" if a.rehearse else "gpu", "date": time.ctime()}
    env |= {"python": platform.python_version(), "torch": torch.__version__}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        props = torch.cuda.get_device_properties(device)
        env |= {"device": props.name, "gpus": torch.cuda.device_count()}
        env["GiB"] = props.total_memory >> 30
        env |= {"capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
        env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        env["cudnn"] = torch.backends.cudnn.version()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"env": env, "deps": deps, "budget_s": a.budget_s, "sections": {}}
    say(f"{env} | {deps}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        c = Context(a, device, Path(tmp))
        report["checks"] = c.checks
        from trainer.synthetic import generate_synthetic

        generate_synthetic(c.tmp / "data", *c.plan["data"])
        run_sections(c, report, out)
    report["elapsed_s"] = time.monotonic() - T0
    write(out, report)
    print((out / "gpu_check.txt").read_text(), end="")
    say(f"wrote {out / 'gpu_check.json'} and gpu_check.txt")
    return 1 if any(s["status"] == "error" for s in report["sections"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
