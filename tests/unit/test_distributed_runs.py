"""Real multi-process gloo runs on localhost: DDP exactness and preemption by a real signal."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import torch
from conftest import base_overrides, make_cfg

from trainer.checkpoint import list_checkpoints, load_checkpoint
from trainer.metrics import read_metrics
from trainer.preemption import EXIT_PREEMPTED, PreemptionFlag, requeue
from trainer.train import run


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(list_checkpoints(out / "checkpoints")[-1].path, weights_only=True)["model"]


def val_record(out: Path) -> dict[str, float]:
    return next(r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "epoch")


@pytest.mark.parametrize(("world", "style"), [(2, "slurm"), (4, "torchrun")])
def test_ddp_matches_single_process_with_global_batch(
    data_dir: Path, tmp_path: Path, ranks_factory: object, world: int, style: str
) -> None:
    """N ranks x batch b == 1 process x batch N*b after k steps (BN-free model, no aug)."""
    b, k = 8, 6
    common = {
        "model": "simple_cnn_nobn",
        "augment": False,
        "epochs": 1,
        "max_steps_per_epoch": k,
        "lr": 0.05,
        "lr_scaling": "none",
        "schedule": "constant",
        "warmup_epochs": 0,
        "label_smoothing": 0.1,
        # NCHW: oneDNN picks NHWC conv kernels by batch size, which reorders float sums more
        # than the tolerance below; the memory format is not what this test is about.
        "channels_last": False,
    }
    single = tmp_path / "single"
    run(make_cfg(data_dir, single, batch_size=world * b, **common))
    multi = tmp_path / "multi"
    ranks = ranks_factory(
        world,
        base_overrides(data_dir, multi, batch_size=b, **common),  # type: ignore[operator]
        tmp_path / "logs",
        style=style,
    )
    assert ranks.wait() == [0] * world, ranks.all_logs()
    log0 = ranks.log(0)
    assert f"world_size={world}" in log0 and "backend=gloo" in log0
    assert f"Batch: {b}/rank x {world} ranks = global batch {world * b}" in log0
    assert all("Epoch 0 - Train Acc" not in ranks.log(r) for r in range(1, world))  # rank 0 only

    ref, got = final_weights(single), final_weights(multi)
    assert [c.step for c in list_checkpoints(multi / "checkpoints")] == [k]
    changed = max((ref[n] - got[n]).abs().max().item() for n in ref)
    moved = sum((ref[n] - make_init_weights()[n]).abs().sum().item() for n in ref)
    assert moved > 1.0  # training really changed the weights
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)
    assert changed < 1e-4
    # validation is summed over ranks: each of the 320 samples counted once, same metrics
    vs, vm = val_record(single), val_record(multi)
    assert vs["val_count"] == vm["val_count"] == 320
    assert vm["val_acc"] == pytest.approx(vs["val_acc"], abs=0.32)  # at most 1 sample flips
    assert vm["val_loss"] == pytest.approx(vs["val_loss"], rel=1e-4)


def make_init_weights() -> dict[str, torch.Tensor]:
    from trainer.models import build_model

    torch.manual_seed(0)
    return build_model("simple_cnn_nobn").state_dict()


def test_preemption_signal_checkpoint_exit_code_and_resume(
    data_dir: Path, tmp_path: Path, ranks_factory: object
) -> None:
    out = tmp_path / "run"
    over = base_overrides(data_dir, out, epochs=2, batch_size=16, log_every=1)
    ranks = ranks_factory(2, over, tmp_path / "logs1")  # type: ignore[operator]
    ranks.wait_for_text("Epoch: 0, Batch: 3,")
    os.kill(ranks.procs[1].pid, signal.SIGUSR2)  # only rank 1 gets it: the flag is all-reduced
    # Rank 0 carries the job's status; the others leave cleanly (see trainer/__main__.py).
    assert ranks.wait() == [EXIT_PREEMPTED, 0], ranks.all_logs()
    log0 = ranks.log(0)
    assert "not running under Slurm" in log0 and "exit code 75" in log0
    ckpts = list_checkpoints(out / "checkpoints")
    assert len(ckpts) == 1
    payload = load_checkpoint(ckpts[0].path)
    assert 3 <= payload["global_step"] < 80  # 40 steps per epoch, 2 epochs
    assert len(payload["rng_states"]) == 2  # one per rank
    step = payload["global_step"]

    again = ranks_factory(2, over, tmp_path / "logs2")  # type: ignore[operator]
    assert again.wait() == [0, 0], again.all_logs()
    assert (
        f"Resumed from {ckpts[0].path} (epoch {payload['epoch']}, batch "
        f"{payload['batch_in_epoch']}, step {step})"
    ) in again.log(0)
    assert list_checkpoints(out / "checkpoints")[-1].step == 2 * 40
    kinds = [r["kind"] for r in read_metrics(out / "metrics.jsonl")]
    assert kinds.count("start") == 2 and "preempted" in kinds and kinds[-1] == "final"


def fake_scontrol(tmp_path: Path, rc: int = 0) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "scontrol"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> "{tmp_path}/scontrol.calls"\n'
        f'[ {rc} -eq 0 ] || echo "scontrol: error: Requeue not allowed" >&2\n'
        f"exit {rc}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir


def test_preemption_under_slurm_requeues_then_respects_the_cap(
    data_dir: Path, tmp_path: Path, ranks_factory: object
) -> None:
    bindir = fake_scontrol(tmp_path)
    out = tmp_path / "run"
    over = base_overrides(
        data_dir, out, epochs=2, log_every=1, preempt_signal="USR1", max_requeues=1
    )
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "SLURM_RESTART_COUNT": "0"}
    first = ranks_factory(1, over, tmp_path / "l1", style="slurm", extra_env=env)  # type: ignore[operator]
    first.wait_for_text("Epoch: 0, Batch: 2,")
    os.kill(first.procs[0].pid, signal.SIGUSR1)
    assert first.wait() == [0], first.all_logs()
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "4242"]
    assert "requeued job 4242" in first.log(0)

    env["SLURM_RESTART_COUNT"] = "1"  # the requeued attempt: cap reached
    second = ranks_factory(1, over, tmp_path / "l2", style="slurm", extra_env=env)  # type: ignore[operator]
    second.wait_for_text("Resumed from")
    second.wait_for_text("Epoch: 0, Batch: ")
    os.kill(second.procs[0].pid, signal.SIGUSR1)
    assert second.wait() == [EXIT_PREEMPTED], second.all_logs()
    assert "requeue cap reached" in second.log(0)
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "4242"]


def test_requeue_decisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert requeue(None, 0, 3).exit_code == EXIT_PREEMPTED
    monkeypatch.setenv("PATH", str(fake_scontrol(tmp_path)))
    r = requeue("100_7", 0, 3)
    assert r.requeued and r.exit_code == 0
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "100_7"]
    r = requeue("100_7", 3, 3)
    assert not r.requeued and r.exit_code == EXIT_PREEMPTED and "cap reached" in r.message
    failing = tmp_path / "failing"
    failing.mkdir()
    monkeypatch.setenv("PATH", str(fake_scontrol(failing, rc=1)))
    r = requeue("5", 0, 3)
    assert not r.requeued and "Requeue not allowed" in r.message
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert "scontrol not found" in requeue("5", 0, 3).message


def fake_slurm_client(tmp_path: Path, squeue_line: str, preempt_mode: str) -> Path:
    """squeue printing one job line; scontrol logging its calls and describing a partition."""
    bindir = tmp_path / "bin"
    bindir.mkdir(parents=True)
    (bindir / "squeue").write_text(f'#!/bin/sh\necho "{squeue_line}"\n')
    (bindir / "scontrol").write_text(
        f'#!/bin/sh\necho "$@" >> "{tmp_path}/scontrol.calls"\n'
        f'[ "$1" = show ] && echo "PartitionName=gpu PreemptMode={preempt_mode} State=UP"\n'
        "exit 0\n"
    )
    for script in bindir.iterdir():
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir


@pytest.mark.parametrize(
    ("squeue_line", "preempt_mode", "slurm_requeues"),
    [
        ("2026-11-25T20:47:47 1 gpu", "REQUEUE", True),
        ("N/A 1 gpu", "REQUEUE", False),  # a time-limit signal: not a preemption
        ("2026-11-25T20:47:47 0 gpu", "REQUEUE", False),  # submitted without --requeue
        ("2026-11-25T20:47:47 1 gpu", "CANCEL", False),  # Slurm would cancel it
    ],
    ids=["preempted", "time-limit", "not-requeueable", "cancel-mode"],
)
def test_requeue_leaves_a_slurm_preemption_to_slurm(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    squeue_line: str,
    preempt_mode: str,
    slurm_requeues: bool,
) -> None:
    monkeypatch.setenv("PATH", str(fake_slurm_client(tmp_path, squeue_line, preempt_mode)))
    r = requeue("42", 0, 3)
    assert r.requeued and r.exit_code == 0
    calls = (tmp_path / "scontrol.calls").read_text().splitlines()
    if slurm_requeues:
        assert "Slurm is preempting job 42" in r.message
        assert "requeue 42" not in calls, "a second requeue would requeue the next run again"
    else:
        assert calls[-1] == "requeue 42" and "requeued job 42" in r.message


def test_signal_handler_only_sets_a_flag() -> None:
    previous = signal.getsignal(signal.SIGUSR2)
    flag = PreemptionFlag(signal.SIGUSR2, check_every=4, device=torch.device("cpu"))
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert flag.received
        assert not flag.check(3)  # only every check_every steps
        assert flag.check(4) and flag.check(5, force=True)
    finally:
        flag.uninstall()
    assert signal.getsignal(signal.SIGUSR2) == previous


def test_master_port_in_use_is_a_clear_error_not_a_hang(data_dir: Path, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from trainer.launch_env import without_launcher_env

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = without_launcher_env(os.environ) | {
            "RANK": "0",
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(busy.getsockname()[1]),
        }
        over = base_overrides(data_dir, tmp_path / "run", dist_timeout_s=20)
        proc = subprocess.run(
            [sys.executable, "-m", "trainer", *over],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "address already in use" in proc.stderr and "Is the port free" in proc.stderr
    assert "Traceback" not in proc.stderr
