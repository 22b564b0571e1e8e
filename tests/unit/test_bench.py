"""Fast checks of the benchmark harness (bench/). No speed target is asserted here: targets are
checked only by ``python -m bench``, side by side in one run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.accuracy import time_to_accuracy
from bench.common import Check, PeakRss, count_flops, format_checks, format_table
from bench.scaling import Key, Point, RankResult, _point, best_points
from bench.throughput import SeedCIFAR10, seed_transform, timed_loop

REPO = Path(__file__).resolve().parents[2]


def test_flop_counter_convention_is_two_flops_per_multiply_add() -> None:
    # Linear(3072 -> 10): 30720 multiply-adds per image; FlopCounterMode counts 2 FLOPs each.
    fc = count_flops(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), torch.device("cpu"), batch=4)
    assert fc.forward == 2 * 3072 * 10
    # backward: grad-weight only (the input does not require grad) = the forward count again
    assert fc.backward == fc.forward


def test_resnet50_flops_per_image_match_the_reference() -> None:
    from trainer.models import build_model

    torch.manual_seed(0)
    fc = count_flops(build_model("resnet50"), torch.device("cpu"), batch=2)
    assert fc.forward == pytest.approx(2.6e9, rel=0.10)  # REFERENCE.md section 5, 2 x MACs
    assert fc.train == pytest.approx(7.8e9, rel=0.10)
    assert 2.9 < fc.train / fc.forward < 3.0  # the stem conv has no grad-input


def test_baseline_dataset_reads_what_the_trainer_reads(tmp_path: Path) -> None:
    from trainer.data import MEAN, STD, read_cifar_dir
    from trainer.synthetic import generate_synthetic

    batch_dir = generate_synthetic(tmp_path, n_train=60, n_val=12, seed=3)
    ours = read_cifar_dir(batch_dir)
    for train, x, y in ((True, ours.train_x, ours.train_y), (False, ours.val_x, ours.val_y)):
        seed = SeedCIFAR10(batch_dir, train=train)
        assert seed.targets == y.tolist()
        assert np.array_equal(seed.data, x.transpose(0, 2, 3, 1))  # HWC, same pixels
    # without the random ops the seed pipeline normalises exactly as the trainer's loader does
    from torchvision import transforms

    plain = SeedCIFAR10(
        batch_dir,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)]),
    )
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    for i in (0, 59):
        img, label = plain[i]
        ref = (torch.from_numpy(ours.train_x[i]).float() / 255 - mean) / std
        assert torch.allclose(img, ref, atol=1e-5) and label == int(ours.train_y[i])
    img, _ = SeedCIFAR10(batch_dir, transform=seed_transform())[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32


def test_table_and_check_formatting() -> None:
    table = format_table(["model", "img/s", "ratio"], [["a", "1,234.5", "1.50x"], ["bb", 7, "12x"]])
    lines = table.splitlines()
    assert lines[0].split() == ["model", "img/s", "ratio"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].startswith("a ") and lines[2].endswith("1.50x")
    assert lines[3].endswith("  12x")  # numbers right-aligned
    assert len(lines[2]) == len(lines[3])
    assert format_table(["x"], [], title="T").splitlines()[0] == "T"

    hit = Check("speed", 1.62, 1.5, unit="x")
    miss = Check("speed", 1.2, 1.5, unit="x", note="CPU")
    low = Check("wait", 3.0, 5.0, higher_is_better=False, unit="%")
    low_miss = Check("wait", 7.5, 5.0, higher_is_better=False, unit="%")
    na = Check("mfu", None, None, note="n/a (GPU target)")
    assert [c.status for c in (hit, miss, low, low_miss, na)] == [
        "PASS",
        "MISS",
        "PASS",
        "MISS",
        "N/A",
    ]
    assert hit.line() == "PASS  speed: 1.62x >= 1.5x"
    assert miss.line() == "MISS  speed: 1.2x >= 1.5x  (CPU)"
    assert low.line() == "PASS  wait: 3% <= 5%"
    assert na.line() == "N/A   mfu: n/a (GPU target)"
    assert format_checks([hit, na]).splitlines()[1].startswith("N/A")
    assert json.loads(json.dumps(miss.to_dict()))["status"] == "MISS"


def test_timed_loop_measures_data_wait() -> None:
    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(0.02)
        return torch.zeros(1), torch.zeros(1)

    total, data = timed_loop(next_batch, lambda x, y: time.sleep(0.02), torch.device("cpu"), 1, 5)
    assert total >= 0.2
    assert 0.3 < data / total < 0.7


def test_peak_rss_and_scaling_arithmetic() -> None:
    with PeakRss(interval=0.01) as rss:
        block = np.ones(32 << 20, dtype=np.uint8)  # 32 MiB
        time.sleep(0.05)
    assert rss.peak >= block.nbytes

    p = _point(
        [RankResult(r, 2, 1, 64, 10, elapsed_s=e, cpu_s=1.0) for r, e in ((0, 2.0), (1, 4.0))]
    )
    assert p.aggregate_img_s == pytest.approx(2 * 64 * 10 / 4.0)  # slowest rank sets the pace
    assert p.per_rank_img_s == pytest.approx((320 + 160) / 2)
    assert p.cores_used == pytest.approx(0.5)


def test_scaling_points_alternate_order_and_keep_the_fastest_round() -> None:
    calls: list[Key] = []
    speeds = iter([100.0, 200.0, 50.0, 300.0, 150.0, 40.0])  # round 1: a, b, c; round 2: c, b, a

    def run(n: int, t: int, ddp: bool) -> Point:
        calls.append((n, t, ddp))
        return Point(n, t, 64, 0.0, next(speeds), 0.0, 1.0)

    a, b, c = (1, 1, True), (2, 1, True), (2, 1, False)
    best = best_points([a, b, c, b], 2, run)  # a repeated key runs once per round
    assert calls == [a, b, c, c, b, a]
    assert {k: p.aggregate_img_s for k, p in best.items()} == {a: 100.0, b: 200.0, c: 300.0}


def test_time_to_accuracy_from_metrics_records() -> None:
    records = [
        {"kind": "start", "time": 100.0, "step": 0},
        {
            "kind": "epoch",
            "epoch": 0,
            "time": 110.0,
            "val_acc": 50.0,
            "train_acc": 40.0,
            "epoch_time_s": 10.0,
            "img_per_s": 100.0,
        },
        {
            "kind": "epoch",
            "epoch": 1,
            "time": 121.0,
            "val_acc": 82.0,
            "train_acc": 70.0,
            "epoch_time_s": 11.0,
            "img_per_s": 100.0,
        },
        {
            "kind": "epoch",
            "epoch": 2,
            "time": 130.0,
            "val_acc": 90.0,
            "train_acc": 85.0,
            "epoch_time_s": 9.0,
            "img_per_s": 110.0,
        },
    ]
    tta = time_to_accuracy(records, 80.0)
    assert (tta["reached"], tta["epochs"], tta["seconds"], tta["best_val_acc"]) == (
        True,
        2,
        21.0,
        90.0,
    )
    assert not time_to_accuracy(records, 95.0)["reached"]


def test_job_probe_reads_phases_from_the_log_and_metrics_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.job_probe import PHASES, metrics_path, phases_seen

    log = "job 7 (restart 0) on node[1-4]\nBackend: gloo (no CUDA device)\nslurmlab trainer | ..."
    assert phases_seen("", []) == set()
    assert phases_seen(log, []) == {"queue_s", "imports_rendezvous_s"}  # header text: no phase
    start, train = {"kind": "start", "step": 0}, {"kind": "train", "step": 1}
    assert phases_seen(log, [start]) == set(PHASES) - {"first_step_s"}
    assert phases_seen(log, [start, train]) == set(PHASES)
    # the trainer's own output_dir rule, in the job's environment
    monkeypatch.setenv("SLURMLAB_SHARED", str(tmp_path))
    config = str(REPO / "jobs/configs/simple_cnn_synthetic.yaml")
    assert metrics_path(config, ["epochs=1"], "42") == tmp_path / "runs/42/metrics.jsonl"
    assert metrics_path(config, [f"output_dir={tmp_path}/x"], "42") == tmp_path / "x/metrics.jsonl"


def test_quick_bench_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--models",
        "simple_cnn",
        "--device",
        "cpu",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--acc-train",
        "640",
        "--acc-epochs",
        "1",
        "--json",
        str(out),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = proc.stdout
    for needle in (
        "=== throughput",
        "=== scaling",
        "=== accuracy",
        "=== summary",
        "fast/baseline img/s, simple_cnn",
        "4-rank DDP efficiency",
    ):
        assert needle in text, text
    assert any(line.startswith(("PASS", "MISS")) for line in text.splitlines())
    report = json.loads(out.read_text())
    assert report["summary"]["errors"] == []
    fast = next(r for r in report["throughput"]["results"] if r["path"] == "fast")
    assert fast["img_s"] > 0 and 0 <= fast["data_wait"] < 1
    assert report["throughput"]["flops_per_image"]["simple_cnn"]["forward"] > 0
    gloo = report["scaling"]["gloo"]
    assert set(gloo["efficiency_wall"]) == set(gloo["efficiency_ddp"]) == {"1", "2", "4"}
    # every multi-rank count ran both with DDP and as independent ranks (the hardware reference)
    ran = {(p["ranks"], p["ddp"]) for p in gloo["points"]}
    assert {(2, True), (2, False), (4, True), (4, False)} <= ran
    assert report["accuracy"]["time_to_accuracy"]["history"]
    print(f"python -m bench --quick (tiny steps) took {elapsed:.1f} s")


def test_profile_sorts_operators_into_kinds_and_shares_sum_to_one() -> None:
    from bench.profile_ops import CATEGORIES, category, profile_step

    assert category("aten::convolution_backward") == "convolution"
    assert category("aten::mkldnn_convolution") == "convolution"
    assert category("aten::native_batch_norm_backward") == "batch norm"
    assert category("aten::threshold_backward") == "relu"
    assert category("aten::_foreach_add_") == "elementwise"
    assert category("aten::_fused_sgd_") == "elementwise"  # the trainer's SGD on CUDA
    assert category("aten::max_pool2d") == "other"
    ms, shares, setup = profile_step("simple_cnn", torch.device("cpu"), batch=4, fast=True, steps=1)
    assert ms > 0
    assert setup == "fp32, NHWC"  # the trainer's CPU setup
    assert set(shares) == set(CATEGORIES)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["convolution"] > 0.1  # a CNN's step is mostly convolutions
