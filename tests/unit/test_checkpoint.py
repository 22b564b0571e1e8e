"""Atomic checkpoint writes, keep-last-K, corrupt files skipped, model mismatch, RNG round trip."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMismatch,
    capture_rng,
    find_latest_valid,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def payload(step: int, epoch: int, model: str = "simple_cnn") -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model_name": model,
        "model": {"w": torch.full((3,), float(step))},
        "optimizer": {},
        "scheduler": {},
        "epoch": epoch,
        "batch_in_epoch": 0,
        "global_step": step,
        "rng_states": [capture_rng()],
        "config": {"model": model},
        "history": [],
    }


def test_save_is_atomic_and_keeps_last_k(tmp_path: Path) -> None:
    for i in range(1, 6):
        save_checkpoint(tmp_path, payload(10 * i, i), keep=3)
    names = [c.path.name for c in list_checkpoints(tmp_path)]
    assert names == [
        "ckpt_s000000030_e0003.pt",
        "ckpt_s000000040_e0004.pt",
        "ckpt_s000000050_e0005.pt",
    ]
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]  # no temp files left
    stale = tmp_path / ".ckpt_s000000060_e0006.pt.tmp-deadhost-1"
    stale.write_bytes(b"partial")
    os.utime(stale, (1, 1))  # a crashed writer's leftover, long ago
    save_checkpoint(tmp_path, payload(60, 6), keep=3)
    assert not stale.exists()
    assert load_checkpoint(tmp_path / names[-1])["global_step"] == 50
    # loads with the safe unpickler (no arbitrary code)
    torch.load(tmp_path / names[-1], weights_only=True)


def test_end_of_epoch_sorts_after_mid_epoch_at_same_step(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, payload(40, 1), keep=0)
    save_checkpoint(tmp_path, payload(40, 2), keep=0)
    assert list_checkpoints(tmp_path)[-1].epoch == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not_a_dict", "partial"])
def test_corrupt_checkpoint_is_skipped_with_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, payload(10, 1), keep=0)
    good = save_checkpoint(tmp_path, payload(20, 2), keep=0)
    bad = tmp_path / "ckpt_s000000030_e0003.pt"
    if damage == "truncate":
        raw = good.read_bytes()
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"\x00garbage" * 1000)
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "not_a_dict":
        torch.save([1, 2, 3], bad)
    else:
        p = payload(30, 3)
        del p["optimizer"]
        torch.save(p, bad)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        found = find_latest_valid(tmp_path, "simple_cnn")
    assert found is not None and found[0] == good
    assert torch.equal(found[1]["model"]["w"], torch.full((3,), 20.0))
    assert any(
        "Skipping corrupt checkpoint" in r.message and bad.name in r.message for r in caplog.records
    )
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_only_corrupt_checkpoints_gives_none(tmp_path: Path) -> None:
    (tmp_path / "ckpt_s000000030_e0003.pt").write_bytes(b"junk")
    assert find_latest_valid(tmp_path, "simple_cnn") is None
    assert find_latest_valid(tmp_path / "missing", "simple_cnn") is None


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, payload(10, 1, model="resnet50"), keep=0)
    with pytest.raises(
        CheckpointMismatch, match="model 'resnet50' but this run trains 'simple_cnn'"
    ):
        find_latest_valid(tmp_path, "simple_cnn")
    assert path.is_file()


def test_rng_round_trip() -> None:
    state = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
