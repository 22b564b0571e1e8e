"""Learnable synthetic stand-in for CIFAR-10, written in the exact ``cifar-10-batches-py`` format.

    python -m trainer.synthetic --out DATA_DIR [--train N] [--val N] [--seed S] [--force]

writes ``DATA_DIR/synthetic/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``:
pickled dicts with ``data`` (uint8, N x 3072, R plane then G then B, 32x32 row-major), ``labels``,
``filenames`` and ``batch_label``, exactly as in the real archive, plus ``synthetic.json``.

Each class is a colour (5 hues) combined with a stripe orientation (horizontal / vertical);
frequency, phase, brightness and colour are jittered per image and Gaussian noise is added.
Orientation survives horizontal flips and crops, so the standard augmentation keeps labels
valid, and telling the two classes of one hue apart needs spatial features (not just colour).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np

from trainer.files import atomic_path, make_shared_dirs, readable_by_all

__all__ = [
    "CLASS_NAMES",
    "generate_synthetic",
    "make_images",
    "synthetic_root",
    "write_cifar_format",
]

BATCH_DIR = "cifar-10-batches-py"
CLASS_NAMES = [
    f"{hue}_{orient}"
    for hue in ("red", "green", "blue", "yellow", "magenta")
    for orient in ("hstripes", "vstripes")
]
_HUES = np.array(
    [[0.85, 0.25, 0.2], [0.25, 0.8, 0.3], [0.25, 0.35, 0.9], [0.85, 0.8, 0.2], [0.8, 0.3, 0.8]],
    dtype=np.float32,
)
GENERATOR_VERSION = 1


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (uint8, n x 3 x 32 x 32) and balanced labels (int64) for seed."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    hue = _HUES[labels // 2] + rng.normal(0.0, 0.15, (n, 3)).astype(np.float32)
    vertical = (labels % 2).astype(bool)
    freq = rng.uniform(2.0, 5.0, n).astype(np.float32)  # cycles per image
    phase = rng.uniform(0.0, 2 * np.pi, n).astype(np.float32)
    amp = rng.uniform(0.06, 0.2, n).astype(np.float32)
    bright = rng.uniform(-0.12, 0.12, n).astype(np.float32)
    coord = np.arange(32, dtype=np.float32) / 32.0
    ys, xs = np.meshgrid(coord, coord, indexing="ij")  # 32 x 32
    axis = np.where(vertical[:, None, None], xs[None], ys[None])  # n x 32 x 32
    stripes = np.sin(2 * np.pi * freq[:, None, None] * axis + phase[:, None, None])
    img = (
        0.15
        + 0.6 * hue[:, :, None, None]
        + bright[:, None, None, None]
        + amp[:, None, None, None] * stripes[:, None]
    )
    img += rng.normal(0.0, 0.3, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), labels


def _dump(path: Path, obj: dict[str, object]) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar_format(
    batch_dir: Path,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    label_names: list[str],
    *,
    n_batches: int = 5,
) -> None:
    """Write arrays (uint8 N x 3 x 32 x 32) as the standard CIFAR-10 python batches."""
    batch_dir.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(len(train_x)), n_batches)
    for i, idx in enumerate(chunks, start=1):
        _dump(
            batch_dir / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of {n_batches}",
                "labels": [int(v) for v in train_y[idx]],
                "data": np.ascontiguousarray(train_x[idx].reshape(len(idx), 3072)),
                "filenames": [f"train_{j:06d}.png" for j in idx],
            },
        )
    _dump(
        batch_dir / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(v) for v in test_y],
            "data": np.ascontiguousarray(test_x.reshape(len(test_x), 3072)),
            "filenames": [f"test_{j:06d}.png" for j in range(len(test_x))],
        },
    )
    _dump(
        batch_dir / "batches.meta",
        {
            "label_names": list(label_names),
            "num_cases_per_batch": len(chunks[0]),
            "num_vis": 3072,
        },
    )


def synthetic_root(data_dir: str | os.PathLike[str]) -> Path:
    """Where the synthetic set lives: <data_dir>/synthetic (holding cifar-10-batches-py)."""
    return Path(data_dir) / "synthetic"


def generate_synthetic(
    data_dir: str | os.PathLike[str],
    n_train: int = 10000,
    n_val: int = 2000,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write the synthetic set atomically (temp dir + rename); returns the batch directory."""
    root = synthetic_root(data_dir)
    final = root / BATCH_DIR
    if final.exists() and not force:
        return final
    make_shared_dirs(root)
    train_x, train_y = make_images(n_train, seed)
    test_x, test_y = make_images(n_val, seed + 1_000_003)
    # keep_existing: if another process (rank, job) renamed its copy into place first, keep it
    with atomic_path(final, keep_existing=Path.exists) as tmp:
        write_cifar_format(tmp, train_x, train_y, test_x, test_y, CLASS_NAMES)
        (tmp / "synthetic.json").write_text(
            json.dumps({"train": n_train, "val": n_val, "seed": seed, "version": GENERATOR_VERSION})
            + "\n"
        )
        readable_by_all(tmp)
        if force and final.exists():
            shutil.rmtree(final)
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.synthetic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", required=True, help="data_dir; writes OUT/synthetic/" + BATCH_DIR)
    ap.add_argument("--train", type=int, default=10000, help="training images (default 10000)")
    ap.add_argument("--val", type=int, default=2000, help="validation images (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite an existing set")
    args = ap.parse_args(argv)
    if args.train < 10 or args.val < 1:
        print("error: --train must be >= 10 and --val >= 1", file=sys.stderr)
        return 2
    path = generate_synthetic(args.out, args.train, args.val, args.seed, force=args.force)
    print(
        f"Synthetic CIFAR-10-format data: {path} (train={args.train} val={args.val} "
        f"seed={args.seed})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
