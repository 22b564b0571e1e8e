"""Fast checks of the benchmark harness (bench/). No speed target is asserted here: targets are
checked only by ``python -m bench``, side by side in one run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.accuracy import time_to_accuracy
from bench.common import best_of_rounds, check, format_table, peak_memory
from bench.throughput import SeedCIFAR10, count_flops, timed_loop

REPO = Path(__file__).resolve().parents[2]


def test_flop_counter_convention_is_two_flops_per_multiply_add() -> None:
    # Linear(3072 -> 10): 30720 multiply-adds per image; FlopCounterMode counts 2 FLOPs each.
    fc = count_flops(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), torch.device("cpu"), n=4)
    assert fc["forward"] == 2 * 3072 * 10
    # backward: grad-weight only (the input does not require grad) = the forward count again
    assert fc["train"] == 2 * fc["forward"]


def test_resnet50_flops_per_image_match_the_reference() -> None:
    from trainer.models import build_model

    torch.manual_seed(0)
    fc = count_flops(build_model("resnet50"), torch.device("cpu"))
    assert fc["forward"] == pytest.approx(2.6e9, rel=0.10)  # 2 x MACs
    assert fc["train"] == pytest.approx(7.8e9, rel=0.10)
    assert 2.9 < fc["train"] / fc["forward"] < 3.0  # the stem conv has no grad-input


def test_baseline_dataset_is_torchvisions_reading_what_the_trainer_reads(tmp_path: Path) -> None:
    from torchvision.datasets import CIFAR10
    from torchvision.transforms import Compose

    from trainer.data import MEAN, STD, read_cifar_dir
    from trainer.synthetic import generate_synthetic

    batch_dir = generate_synthetic(tmp_path, n_train=60, n_val=12, seed=3)
    ours = read_cifar_dir(batch_dir)
    for train, x, y in ((True, ours.train_x, ours.train_y), (False, ours.val_x, ours.val_y)):
        seed = SeedCIFAR10(batch_dir, train=train)
        assert isinstance(seed, CIFAR10) and seed.targets == y.tolist()
        assert np.array_equal(seed.data, x.transpose(0, 2, 3, 1))  # HWC, the same pixels
    seed = SeedCIFAR10(batch_dir)
    img, label = seed[0]  # the seed's random crop + flip, then normalised
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and label == ours.train_y[0]
    seed.transform = Compose(seed.transform.transforms[-2:])  # no random ops: ToTensor, Normalize
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    for i in (0, 59):
        ref = (torch.from_numpy(ours.train_x[i]).float() / 255 - mean) / std
        assert torch.allclose(seed[i][0], ref, atol=1e-5)  # as the trainer's loader normalises


def test_table_and_check_formatting(capsys: pytest.CaptureFixture[str]) -> None:
    table = format_table(["model", "img/s", "ratio"], [["a", "1,234.5", "1.50x"], ["bb", 7, "12x"]])
    lines = table.splitlines()
    assert lines[0].split() == ["model", "img/s", "ratio"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].startswith("a ") and lines[2].endswith("1.50x")
    assert lines[3].endswith("  12x")  # numbers right-aligned
    assert len(lines[2]) == len(lines[3])
    assert format_table(["x"], [], title="T").splitlines()[0] == "T"

    results = [
        check("speed", 1.62, 1.5, "x"),
        check("speed", 1.2, 1.5, "x", note="CPU"),
        check("wait", 3.0, 5.0, "%", lower=True),
        check("wait", 7.5, 5.0, "%", lower=True),
        check("mfu", None, None, note="n/a (GPU target)"),
    ]
    assert [c["status"] for c in results] == ["PASS", "MISS", "PASS", "MISS", "N/A"]
    assert capsys.readouterr().out.splitlines() == [
        "PASS  speed: 1.62x >= 1.5x",
        "MISS  speed: 1.2x >= 1.5x  (CPU)",
        "PASS  wait: 3% <= 5%",
        "MISS  wait: 7.5% <= 5%",
        "N/A   mfu: n/a (GPU target)",
    ]


class FakeClock:
    """A clock that only moves when the test says: the loop's arithmetic, exactly."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_timed_loop_counts_only_the_timed_steps_and_their_data_wait() -> None:
    clock, calls = FakeClock(), []

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        clock.now += 3.0  # waiting for data
        return torch.zeros(1), torch.zeros(1)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        calls.append(clock.now)
        clock.now += 7.0  # computing

    total, data = timed_loop(next_batch, step, torch.device("cpu"), 2, 5, clock=clock)
    assert len(calls) == 2 + 5
    assert total == 5 * (3.0 + 7.0)  # the 2 warm-up steps (20 s) are not in it
    assert data == 5 * 3.0
    assert timed_loop(next_batch, step, torch.device("cpu"), 1, 0, clock=clock) == (0.0, 0.0)


def test_peak_memory_sees_a_block_allocated_inside() -> None:
    with peak_memory(torch.device("cpu")) as peak:
        block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
        time.sleep(0.3)
    assert peak[0] >= block.nbytes


def test_scaling_launches_standalone_ranks_and_turns_their_times_into_a_point(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch.distributed.launcher.api as launcher

    from bench.scaling import RankSpec, launch, train_rank

    seen = {}

    def fake_launch(config: launcher.LaunchConfig, fn: object) -> object:
        seen["config"], seen["fn"] = config, fn
        seen["env"] = dict(os.environ)
        return lambda *args: {0: (2.0, 1.0), 1: (4.0, 1.0)}  # (wall, CPU seconds) per rank

    monkeypatch.setattr(launcher, "elastic_launch", fake_launch)
    monkeypatch.setenv("SLURM_PROCID", "3")  # the bench's own shell runs inside a Slurm job
    p = launch(RankSpec("simple_cnn", 64, 1, 10, tmp_path, "cpu"), (2, 1, True))
    config = seen["config"]
    assert (config.nproc_per_node, config.max_nodes, config.rdzv_endpoint) == (2, 1, "localhost:0")
    assert seen["fn"] is train_rank and config.max_restarts == 0
    assert seen["env"]["OMP_NUM_THREADS"] == "1" and "SLURM_PROCID" not in seen["env"]
    assert os.environ["SLURM_PROCID"] == "3"  # restored after the launch
    assert p.aggregate_img_s == pytest.approx(2 * 64 * 10 / 4.0)  # the slowest rank sets the pace
    assert p.per_rank_img_s == pytest.approx((320 + 160) / 2)
    assert p.step_ms == pytest.approx(400.0)
    assert p.cores_used == pytest.approx(0.5)


def test_best_of_rounds_alternates_the_order_and_keeps_each_keys_best() -> None:
    calls: list[str] = []
    speeds = iter([100.0, 200.0, 50.0, 300.0, 150.0, 40.0])  # round 1: a, b, c; round 2: c, b, a

    def run(key: str) -> float:
        calls.append(key)
        return next(speeds)

    best = best_of_rounds(["a", "b", "c", "b"], 2, run, lambda s: s)  # a repeat runs once a round
    assert calls == ["a", "b", "c", "c", "b", "a"]
    assert best == {"a": 100.0, "b": 200.0, "c": 300.0}


def test_time_to_accuracy_from_metrics_records() -> None:
    epoch = {"train_acc": 40.0, "epoch_time_s": 10.0, "img_per_s": 100.0}
    records = [
        {"kind": "start", "time": 100.0, "step": 0},
        {"kind": "epoch", "epoch": 0, "time": 110.0, "val_acc": 50.0, **epoch},
        {"kind": "epoch", "epoch": 1, "time": 121.0, "val_acc": 82.0, **epoch},
        {"kind": "epoch", "epoch": 2, "time": 130.0, "val_acc": 90.0, **epoch},
    ]
    tta = time_to_accuracy(records, 80.0)
    assert (tta["reached"], tta["epochs"], tta["seconds"], tta["best_val_acc"]) == (
        True,
        2,
        21.0,
        90.0,
    )
    assert [h["since_start_s"] for h in tta["history"]] == [10.0, 21.0, 30.0]
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


def test_quick_bench_runs_end_to_end() -> None:
    args = ["--quick", "--models", "simple_cnn", "--device", "cpu", "--steps", "2", "--warmup"]
    args += ["1", "--acc-train", "640", "--acc-epochs", "1"]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed, text = time.monotonic() - t0, proc.stdout
    assert proc.returncode == 0, text[-4000:] + proc.stderr[-4000:]
    for section in ("throughput", "profile", "scaling", "accuracy", "summary"):
        assert f"=== {section} " in text, text
    lines = text.splitlines()
    for path in ("fast", "baseline"):  # img/s, step ms, data wait, peak MiB, MFU
        assert re.search(
            rf"^simple_cnn +{path} +128 +[\d,.]+ +[\d.]+ +[\d.]+% +[\d,]+ ", text, re.M
        )
    assert "simple_cnn: forward 25.4 MFLOP, forward+backward 74.3 MFLOP" in text
    assert any(line.startswith(("PASS  fast/baseline", "MISS  fast/baseline")) for line in lines)
    # every rank count ran with DDP and, as the hardware reference, without it
    for n in (2, 4):
        assert re.search(rf"^ +{n} +1 +{n}.* +[\d,.]+ +\d+ +[\d.]+ +[\d,.]+ +[\d.]+% ", text, re.M)
    assert "4-rank DDP efficiency, CPU/gloo, vs the same 4 ranks" in text
    assert re.search(r"^simple_cnn +fast +fp32, NHWC +[\d.]+ +[\d.]+%", text, re.M)  # profile
    assert re.search(r"^ +0 +[\d.]+% +[\d.]+% ", text, re.M)  # the accuracy run's epoch
    assert re.search(r"^\d+ PASS, \d+ MISS, \d+ N/A, 0 failed", text, re.M)
    print(f"python -m bench --quick (tiny steps) took {elapsed:.1f} s")


def test_profile_sorts_operators_into_kinds_and_shares_sum_to_one(tmp_path: Path) -> None:
    from bench.throughput import CATEGORIES, category, profile_step
    from trainer.synthetic import generate_synthetic

    assert category("aten::convolution_backward") == "convolution"
    assert category("aten::mkldnn_convolution") == "convolution"
    assert category("aten::native_batch_norm_backward") == "batch norm"
    assert category("aten::threshold_backward") == "relu"
    assert category("aten::_foreach_add_") == "elementwise"
    assert category("aten::_fused_sgd_") == "elementwise"  # the trainer's SGD on CUDA
    assert category("aten::max_pool2d") == "other"
    data = generate_synthetic(tmp_path, n_train=40, n_val=8)
    ms, shares, setup = profile_step("simple_cnn", torch.device("cpu"), 4, data, True, steps=1)
    assert ms > 0
    assert setup == "fp32, NHWC"  # the trainer's CPU setup
    assert set(shares) == set(CATEGORIES)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["convolution"] > 0.1  # a CNN's step is mostly convolutions
