"""bench/gpu_check.py: its CPU rehearsal end to end (the report's figures are the run's own), a
failing section that does not stop the others, and the wheel-folder fallback for modules a bare
GPU machine lacks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import gpu_check
from trainer.launch_env import without_launcher_env

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("trainer", "throughput", "ablation", "ddp")


def child_env() -> dict[str, str]:
    return without_launcher_env(os.environ) | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--rehearse`` run: its JSON report and text report."""
    out = tmp_path_factory.mktemp("gpu_check")
    command = [sys.executable, "-m", "bench.gpu_check", "--rehearse", "--out", str(out)]
    run = subprocess.run(
        command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    report = json.loads((out / "gpu_check.json").read_text())
    return report | {"text": (out / "gpu_check.txt").read_text()}


def test_rehearsal_runs_every_section_on_cpu(rehearsal: dict[str, Any]) -> None:
    assert rehearsal["env"]["mode"] == "rehearse (cpu, gloo)"
    assert [rehearsal["sections"][s]["status"] for s in SECTIONS] == ["ok"] * 4, rehearsal
    assert all(rehearsal["sections"][s]["seconds"] > 0 for s in SECTIONS)
    assert rehearsal["deps"] == dict.fromkeys([*gpu_check.DEPS, "numpy"], "present")


def test_trainer_checkpoint_resumes_where_it_was_saved(rehearsal: dict[str, Any]) -> None:
    tr = rehearsal["sections"]["trainer"]
    group = tr["process_group"]
    assert group["backend"] == "gloo" and group["world_size"] == 1
    assert group["all_reduce_ok"] and group["all_reduce_max_err"] == 0.0
    assert group["all_ok_vote"] and group["on_main"] == "from rank 0"
    first, resumed = tr["runs"]["first"], tr["runs"]["resumed"]
    assert first["rc"] == resumed["rc"] == 0
    assert first["steps"] == 16 and len(first["val_acc"]) == 2  # 2 epochs of 8 steps
    resume = tr["resume"]
    assert resume["resumed_at_step"] == resume["checkpoint_step"] == 12  # mid-epoch 1
    assert resume["final_step"] == resume["expected_final_step"] == 16
    assert len(resumed["val_acc"]) == 1  # only epoch 1 was left
    # the resumed run ends where the uninterrupted one did: same threads, same CPU, exact
    assert resume["weights_max_abs_diff_vs_uninterrupted"] == 0.0
    assert resumed["val_acc"][-1] == first["val_acc"][-1]
    lines = "\n".join(first["lines"])
    assert "Epoch: 0, Batch: 2, Loss: " in lines and "Epoch 1 - Train Acc: " in lines
    assert "Device: cpu, backend=none" in lines  # world size 1: no process group
    assert any(line.startswith("Resumed from ") for line in resumed["lines"])


def test_throughput_rows_are_measured(rehearsal: dict[str, Any]) -> None:
    rows = rehearsal["sections"]["throughput"]["rows"]
    paths = [(r["model"], r["path"]) for r in rows]
    models, kinds = ("simple_cnn", "resnet50"), ("fast", "baseline")
    assert sorted(paths) == sorted((m, p) for m in models for p in kinds)
    for r in rows:
        assert "error" not in r, r
        assert r["img_s"] > 0 and r["step_ms"] > 0 and 0 <= r["data_wait"] < 1
        assert r["peak_mem_mib"] > 0 and r["train_flops"] > 0
        assert r["mfu"] is None  # no bf16 peak for a CPU
    names = [c["name"] for c in rehearsal["checks"]]
    assert "fast/baseline img/s, resnet50, batch 4, cpu" in names
    assert all(c["status"] in ("PASS", "MISS", "N/A") for c in rehearsal["checks"])


def test_ablation_measures_each_toggle_or_says_why_not(rehearsal: dict[str, Any]) -> None:
    rows = rehearsal["sections"]["ablation"]["rows"]
    assert list(rows) == list(gpu_check.ABLATION)
    for name, r in rows.items():
        if "skipped" in r:  # compile, where the image has no C++ compiler
            assert name == "compile on" and "compiler" in r["skipped"]
            continue
        assert r["img_s"] > 0 and r["step_ms"] > 0 and r["peak_mem_mib"] > 0, (name, r)
        assert r["feature_gain_x"] > 0 and 0 <= r["data_wait"] < 1
    assert rows["reference (trainer default)"]["feature_gain_x"] == 1.0


def test_ddp_compares_two_ranks_with_and_without_ddp(rehearsal: dict[str, Any]) -> None:
    ddp = rehearsal["sections"]["ddp"]
    assert ddp["backend"] == "gloo" and ddp["ranks"] == 2
    assert ddp["ddp_img_s"] > 0 and ddp["no_ddp_img_s"] > 0
    assert ddp["efficiency"] == pytest.approx(ddp["ddp_img_s"] / ddp["no_ddp_img_s"])


def test_text_report_has_every_table(rehearsal: dict[str, Any]) -> None:
    for title in ("Sections", "Trainer", "Throughput", "Ablation", "Targets"):
        assert f"\n{title}" in rehearsal["text"]
    assert "Resumed from " in rehearsal["text"]
    assert re.search(r"^resnet50 +fast +4 ", rehearsal["text"], re.M), rehearsal["text"]


def test_a_failing_section_is_recorded_and_the_next_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(c: Any, rec: dict[str, Any]) -> None:
        rec["partial"] = 1.5
        raise ValueError("no such device")

    def fine(c: Any, rec: dict[str, Any]) -> None:
        rec["figure"] = 2.0

    monkeypatch.setattr(gpu_check, "SECTIONS", {"broken": broken, "fine": fine})
    c = SimpleNamespace(a=SimpleNamespace(only=["broken", "fine"]), checks=[])
    report: dict[str, Any] = {"env": {}, "deps": {}, "sections": {}, "checks": []}
    gpu_check.run_sections(c, report, tmp_path)  # type: ignore[arg-type]
    broken_rec, fine_rec = report["sections"]["broken"], report["sections"]["fine"]
    assert broken_rec["status"] == "error" and broken_rec["partial"] == 1.5
    assert broken_rec["error"] == "ValueError: no such device"
    assert 'raise ValueError("no such device")' in broken_rec["traceback"]
    assert fine_rec["status"] == "ok" and fine_rec["figure"] == 2.0
    gpu_check.write(tmp_path, report)
    assert json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["fine"]["figure"]
    assert "ValueError: no such device" in (tmp_path / "gpu_check.txt").read_text()


# ---------------------------------------------------------------- missing modules
def make_wheel(folder: Path, dist: str, version: str, tag: str, files: dict[str, str]) -> Path:
    """A minimal wheel: the files, METADATA, WHEEL and RECORD (no hashes)."""
    name = dist.replace("-", "_")
    info = f"{name}-{version}.dist-info"
    files = files | {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    wheel = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{info}/RECORD", "".join(f"{p},,\n" for p in [*files, f"{info}/RECORD"]))
    return wheel


CP27 = "cp27-cp27mu-manylinux1_x86_64"


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    """A wheel folder: pyyaml (pure-Python part of the installed one), a probe module that
    loads here (VALUE 42) and a newer probe for CPython 2.7 that must never be chosen."""
    import yaml

    folder = tmp_path / "whl"
    folder.mkdir()
    package = Path(yaml.__file__).parent
    sources = {f"yaml/{p.relative_to(package)}": p.read_text() for p in package.rglob("*.py")}
    make_wheel(folder, "pyyaml", "6.0", "py3-none-any", sources)
    for version, tag, value in (("1.0", "py3-none-any", 42), ("2.0", CP27, 27)):
        make_wheel(
            folder, "gpucheck-probe", version, tag, {"gpucheck_probe.py": f"VALUE = {value}"}
        )
    return folder


PROBE = """
import json, subprocess, sys
from pathlib import Path
from bench.gpu_check import ensure_deps
got = {{"states": ensure_deps({deps}, Path({wheels!r}))}}
import yaml, gpucheck_probe
from torchvision import transforms
from torchvision.datasets import CIFAR10
got |= {{"load": yaml.safe_load("a: [1, 2]"), "value": gpucheck_probe.VALUE, "stand_in": "usable"}}
try:
    transforms.Compose([])
except ModuleNotFoundError as exc:
    got["stand_in"] = str(exc)
child = [sys.executable, *{flags}, "-c", "import yaml, gpucheck_probe as p; print(p.VALUE)"]
run = subprocess.run(child, capture_output=True, text=True)
print(json.dumps(got | {{"child": run.stdout.strip() or run.stderr}}))
"""


def probe(wheels: Path, deps: dict[str, str], flags: list[str]) -> dict[str, Any]:
    code = PROBE.format(deps=deps, wheels=str(wheels), flags=flags)
    env = child_env() | {"PYTHONPATH": ""}  # -S alone decides what is importable
    command = [sys.executable, *flags, "-c", code]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_a_bare_python_without_pip_unpacks_the_wheels_it_can_load(wheels: Path) -> None:
    # -S: no site-packages, so no yaml, no torchvision and no pip, as on a bare machine
    got = probe(wheels, {"yaml": "pyyaml", "gpucheck_probe": "gpucheck-probe"}, ["-S"])
    assert got["states"] == {
        "yaml": "from .whl",
        "gpucheck_probe": "from .whl",
        "torchvision": "stand-in",
    }
    assert got["load"] == {"a": [1, 2]} and got["value"] == 42  # not the CPython 2.7 wheel
    assert got["child"] == "42"  # children (torchrun, DDP ranks) get it through PYTHONPATH
    assert "torchvision is not installed" in got["stand_in"]


def test_pip_installs_a_missing_module_from_the_wheel_folder(wheels: Path) -> None:
    got = probe(wheels, {"yaml": "pyyaml", "gpucheck_probe": "gpucheck-probe"}, [])
    assert got["states"] == {"yaml": "present", "gpucheck_probe": "from .whl"}
    assert got["value"] == 42 and got["child"] == "42" and got["stand_in"] == "usable"


def test_a_module_missing_from_the_wheel_folder_too_is_reported(tmp_path: Path) -> None:
    states = gpu_check.ensure_deps({"json": "stdlib", "gpucheck_absent": "x"}, tmp_path / "none")
    assert states == {"json": "present", "gpucheck_absent": "missing"}


@pytest.mark.parametrize(
    ("wheel", "here", "loads"),
    [
        ("pydantic-2.14.4-py3-none-any.whl", (3, 13), True),
        ("pyyaml-6.0.3-cp313-cp313-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", (3, 13), True),
        ("pyyaml-6.0.3-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", (3, 13), False),
        ("psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_28_x86_64.whl", (3, 10), True),
        ("pydantic_core-2.50.5-cp314-cp314-manylinux2014_x86_64.whl", (3, 10), False),
        ("psutil-7.2.2-cp37-abi3-win_amd64.whl", (3, 13), False),
    ],
)
def test_wheel_tags_decide_what_loads(wheel: str, here: tuple[int, int], loads: bool) -> None:
    assert gpu_check.loadable(wheel, here, "x86_64") is loads
    assert not gpu_check.loadable(wheel, here, "aarch64") or wheel.endswith("-any.whl")
