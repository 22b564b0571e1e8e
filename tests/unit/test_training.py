"""In-process training runs (single rank): accuracy, both loaders, exact resume, checkpoints."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_cfg

from trainer.checkpoint import CheckpointError, CheckpointMismatch, list_checkpoints
from trainer.metrics import read_metrics
from trainer.train import lr_factor, run

RESULT_KEYS = {
    "status",
    "exit_code",
    "requeued",
    "epochs_completed",
    "epochs",
    "global_step",
    "val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "best_val_acc",
    "world_size",
    "global_batch",
    "lr_effective",
    "checkpoint",
    "resumed_from",
    "output_dir",
    "metrics_path",
    "elapsed_s",
}


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    last = list_checkpoints(out / "checkpoints")[-1].path
    return torch.load(last, weights_only=True)["model"]


def epoch_records(out: Path) -> dict[int, dict[str, Any]]:
    return {r["epoch"]: r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "epoch"}


def test_synthetic_training_beats_chance(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    res = run(make_cfg(data_dir, out, epochs=3, plot=True, keep_checkpoints=2))
    stdout = capsys.readouterr().out
    assert set(res) == RESULT_KEYS
    assert res["status"] == "completed" and res["exit_code"] == 0
    assert res["epochs_completed"] == 3 and res["world_size"] == 1
    assert res["val_acc"] > 50.0, stdout  # 10 classes: chance is 10%
    assert res["global_step"] == 3 * (1280 // 32)
    assert "Epoch: 0, Batch: 10, Loss: " in stdout and " img/s" in stdout
    assert "Epoch 2 - Train Acc: " in stdout and "Val Acc: " in stdout
    assert f"Checkpoint saved: {res['checkpoint']}" in stdout
    assert "Final: epoch=3 val_acc=" in stdout and "Host: rss=" in stdout
    assert "lr 0.2 @ global batch 256 -> 0.025" in stdout  # linear scaling printed
    assert len(list_checkpoints(out / "checkpoints")) == 2  # keep_checkpoints
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1, 2]
    assert any(r["kind"] == "train" for r in records)
    assert (out / "curves.png").stat().st_size > 1000


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_dataloader_path_trains(data_dir: Path, tmp_path: Path) -> None:
    res = run(make_cfg(data_dir, tmp_path / "dl", loader="dataloader", num_workers=1, epochs=3))
    assert res["status"] == "completed" and res["val_acc"] > 40.0


def test_fast_path_without_augmentation_trains(data_dir: Path, tmp_path: Path) -> None:
    res = run(
        make_cfg(
            data_dir,
            tmp_path / "fast",
            augment=False,
            epochs=2,
            optimizer="adamw",
            lr=0.004,
            schedule="cosine",
            weight_decay=0.05,
        )
    )
    assert res["val_acc"] > 40.0


@pytest.fixture(scope="module")
def reference_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 epochs, every checkpoint kept (end of epoch + every 15 steps), never interrupted."""
    out = tmp_path_factory.mktemp("reference")
    run(make_cfg(data_dir, out, epochs=3, checkpoint_every_steps=15))
    return out


def _resume_from(data_dir: Path, reference: Path, out: Path, names: list[str]) -> dict[str, Any]:
    (out / "checkpoints").mkdir(parents=True)
    for name in names:
        shutil.copy(reference / "checkpoints" / name, out / "checkpoints" / name)
    return run(make_cfg(data_dir, out, epochs=3, checkpoint_every_steps=15))


@pytest.mark.parametrize(
    ("name", "first_epoch"),
    [
        ("ckpt_s000000040_e0001.pt", 1),  # stopped after epoch 0
        ("ckpt_s000000060_e0001.pt", 1),  # stopped mid-epoch 1 (batch 20)
    ],
)
def test_resume_matches_uninterrupted_run(
    data_dir: Path, tmp_path: Path, reference_run: Path, name: str, first_epoch: int
) -> None:
    res = _resume_from(data_dir, reference_run, tmp_path / "resumed", [name])
    assert res["resumed_from"] and res["resumed_from"].endswith(name)
    ref, got = final_weights(reference_run), final_weights(tmp_path / "resumed")
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    ref_epochs, got_epochs = epoch_records(reference_run), epoch_records(tmp_path / "resumed")
    for epoch in range(first_epoch, 3):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert ref_epochs[epoch][key] == got_epochs[epoch][key], (epoch, key)


def test_corrupt_newest_checkpoint_is_skipped_in_a_run(
    data_dir: Path, tmp_path: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(reference_run / "checkpoints" / "ckpt_s000000040_e0001.pt", out / "checkpoints")
    newest = reference_run / "checkpoints" / "ckpt_s000000060_e0001.pt"
    (out / "checkpoints" / newest.name).write_bytes(newest.read_bytes()[:5000])  # torn write
    res = run(make_cfg(data_dir, out, epochs=3, checkpoint_every_steps=15))
    stdout = capsys.readouterr().out
    assert "WARNING: Skipping corrupt checkpoint" in stdout and newest.name in stdout
    assert res["resumed_from"].endswith("ckpt_s000000040_e0001.pt")
    ref = final_weights(reference_run)
    got = final_weights(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_resume_of_finished_run_is_a_no_op(
    data_dir: Path, tmp_path: Path, reference_run: Path
) -> None:
    out = tmp_path / "done"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(reference_run / "checkpoints" / "ckpt_s000000120_e0003.pt", out / "checkpoints")
    res = run(make_cfg(data_dir, out, epochs=3, checkpoint_every_steps=15))
    assert res["status"] == "completed" and res["epochs_completed"] == 3
    assert res["val_acc"] == epoch_records(reference_run)[2]["val_acc"]


def test_checkpoint_of_another_model_is_refused(
    data_dir: Path, tmp_path: Path, reference_run: Path
) -> None:
    out = tmp_path / "other"
    (out / "checkpoints").mkdir(parents=True)
    src = reference_run / "checkpoints" / "ckpt_s000000040_e0001.pt"
    shutil.copy(src, out / "checkpoints")
    with pytest.raises(CheckpointMismatch, match="simple_cnn_nobn"):
        run(make_cfg(data_dir, out, model="simple_cnn_nobn"))
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == [src.name]
    with pytest.raises(CheckpointError, match="resume=never"):
        run(make_cfg(data_dir, out, resume="never"))


def test_metrics_jsonl_is_appended_on_resume(reference_run: Path) -> None:
    kinds = [
        json.loads(line)["kind"]
        for line in (reference_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert kinds[0] == "start" and kinds[-1] == "final"


def test_schedules() -> None:
    total, warm = 100, 10
    cos = [lr_factor(s, "cosine", warm, total, 0.0) for s in range(total)]
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0)
    assert cos[10] == pytest.approx(1.0) and cos[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(cos[10:]))
    one = [lr_factor(s, "onecycle", warm, total, 0.0) for s in range(total)]
    assert one[0] == pytest.approx(0.04) and max(one) == pytest.approx(1.0)
    assert one[-1] < 0.02
    assert lr_factor(50, "constant", warm, total, 0.0) == 1.0


def test_plot_cli(reference_run: Path, tmp_path: Path) -> None:
    from trainer.plot import main

    dest = tmp_path / "c.png"
    assert main([str(reference_run), "--out", str(dest)]) == 0
    assert dest.read_bytes()[:4] == b"\x89PNG"
    assert main([str(tmp_path / "nothing")]) == 2


def test_submitit_job_lets_the_trainer_handle_the_signal(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pickle

    from submitit.helpers import DelayedSubmission

    from trainer.submitit_job import TrainJob

    job = TrainJob(make_cfg(data_dir, tmp_path / "s", epochs=1, max_steps_per_epoch=3))
    res = job()
    assert res["status"] == "completed" and res["global_step"] == 3
    # the trainer owns the signal under submitit too (see trainer/submitit_job.py)
    assert "Preemption: SIGUSR2 checked every 1 step(s)" in capsys.readouterr().out
    delayed = job.checkpoint()
    assert isinstance(delayed, DelayedSubmission) and delayed.function.cfg == job.cfg
    pickle.loads(pickle.dumps(job))


def test_unwritable_output_dir_fails_before_training(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import base_overrides

    from trainer.__main__ import main

    # /proc refuses new entries even to root: the run must stop with the fix, not a traceback.
    over = base_overrides(data_dir, Path("/proc/slurmlab-not-writable"), epochs=1)
    assert main(["--config", "jobs/configs/simple_cnn_synthetic.yaml", *over]) == 3
    err = capsys.readouterr().err
    assert "cannot write to /proc/slurmlab-not-writable" in err and "set output_dir=" in err
    assert "Traceback" not in err
