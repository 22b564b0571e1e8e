"""Checkpoints: atomic write, keep-last-K, find the latest *valid* one.

File name: ``ckpt_s{global_step:09d}_e{epoch:04d}.pt`` in ``checkpoint_dir``; ordering is by
(global_step, epoch), so an end-of-epoch checkpoint sorts after a mid-epoch one at the same step.
The payload is a plain dict readable with ``torch.load(path, weights_only=True)``; see
:data:`REQUIRED_KEYS` and trainer/README.md.
"""

from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.files import atomic_path, remove_stale_temps

log = logging.getLogger("trainer")

FORMAT_VERSION = 1
STALE_TMP_S = 3600  # temp files older than this are leftovers of a crashed save
NAME_RE = re.compile(r"^ckpt_s(\d{9})_e(\d{4})\.pt$")
REQUIRED_KEYS = (
    "format_version",
    "model_name",
    "model",
    "optimizer",
    "scheduler",
    "epoch",
    "batch_in_epoch",
    "global_step",
    "rng_states",
    "config",
)

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointMismatch",
    "capture_rng",
    "checkpoint_name",
    "find_latest_valid",
    "list_checkpoints",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or is incomplete."""


class CheckpointMismatch(RuntimeError):
    """A valid checkpoint that belongs to a different run (another model)."""


@dataclass(frozen=True)
class CkptFile:
    path: Path
    step: int
    epoch: int


def checkpoint_name(global_step: int, epoch: int) -> str:
    return f"ckpt_s{global_step:09d}_e{epoch:04d}.pt"


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CkptFile]:
    """Checkpoint files in ``directory``, oldest first (temp files are ignored)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = NAME_RE.match(p.name)
        if m and p.is_file():
            out.append(CkptFile(p, int(m.group(1)), int(m.group(2))))
    return sorted(out, key=lambda c: (c.step, c.epoch))


# ---------------------------------------------------------------- RNG state
def capture_rng() -> dict[str, Any]:
    """This process's RNG states, as types that torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(v) for v in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ---------------------------------------------------------------- write
def save_checkpoint(directory: str | os.PathLike[str], payload: dict[str, Any], keep: int) -> Path:
    """Write atomically (temp file in the same dir, fsync, os.replace, directory fsync: see
    trainer/files.py), then keep the newest K.

    Call on rank 0 only. ``keep=0`` keeps every checkpoint.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    final = d / checkpoint_name(int(payload["global_step"]), int(payload["epoch"]))
    # durable: a preempted job's next attempt, maybe on another node, resumes from this file
    with atomic_path(final, durable=True) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
    remove_stale_temps(d, "ckpt_*.pt", STALE_TMP_S)  # left by a writer that died mid-save
    if keep > 0:
        for old in list_checkpoints(d)[:-keep]:
            if old.path != final:
                old.path.unlink(missing_ok=True)
    return final


# ---------------------------------------------------------------- read
def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load and check a checkpoint; raises CheckpointError for unreadable / partial files."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()]
        detail = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
        raise CheckpointError(
            f"{path}: unreadable ({exc.__class__.__name__}: {detail[:300]})"
        ) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a trainer checkpoint (got {type(payload).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing}")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {payload['format_version']} is not "
            f"supported (expected {FORMAT_VERSION})"
        )
    return payload


def find_latest_valid(
    directory: str | os.PathLike[str], model_name: str
) -> tuple[Path, dict[str, Any]] | None:
    """Newest loadable checkpoint in ``directory``; corrupt files are skipped with a warning.

    Raises CheckpointMismatch if the newest valid checkpoint belongs to another model.
    """
    for ck in reversed(list_checkpoints(directory)):
        try:
            payload = load_checkpoint(ck.path)
        except CheckpointError as exc:
            log.warning("Skipping corrupt checkpoint: %s", exc)
            continue
        if payload["model_name"] != model_name:
            raise CheckpointMismatch(
                f"{ck.path} is a checkpoint of model {payload['model_name']!r} but this run "
                f"trains {model_name!r}. Refusing to resume from or overwrite it: set "
                "output_dir (or checkpoint_dir) to a fresh directory for this run."
            )
        return ck.path, payload
    return None
