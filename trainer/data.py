"""CIFAR-10 on disk: the ``cifar-10-batches-py`` reader, md5-verified download and extraction,
and staging of the real or the synthetic set; :class:`ArrayDataset` is what the loaders get.

Downloading, md5 and extraction are torchvision's (``torchvision.datasets.utils``); this module
adds what a shared cluster filesystem needs around them. Files appear under their final names
atomically (trainer/files.py), so ranks and jobs on other nodes that share ``data_dir`` never
read a half-written archive or dataset directory, and every failure names its fix. The loaders
that turn an :class:`ArrayDataset` into batches live in trainer/loaders.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import socket
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.files import atomic_path, make_shared_dirs, readable_by_all
from trainer.synthetic import BATCH_DIR, generate_synthetic, synthetic_root

log = logging.getLogger("trainer")

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
# per-channel mean and std of the CIFAR-10 training images, for normalisation
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

__all__ = [
    "MEAN",
    "STD",
    "ArrayDataset",
    "DataError",
    "dataset_dir",
    "ensure_cifar10",
    "ensure_synthetic",
    "prepare_dataset",
    "read_cifar_dir",
]


class DataError(RuntimeError):
    """Data is missing, corrupt or cannot be fetched; the message says how to fix it."""


@dataclass
class ArrayDataset:
    """A whole dataset in host memory, as read from disk; the input of trainer/loaders.py."""

    train_x: np.ndarray  # uint8, N x 3 x 32 x 32
    train_y: np.ndarray  # int64, N
    val_x: np.ndarray
    val_y: np.ndarray
    classes: list[str]


# ---------------------------------------------------------------- on-disk format
def _load_pickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR batch (expected a dict)")
    return obj


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    entry = _load_pickle(path)
    try:
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed CIFAR batch ({exc})") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: malformed CIFAR batch (data {data.shape}, {len(labels)} labels)")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_dir(batch_dir: str | os.PathLike[str]) -> ArrayDataset:
    """Read a ``cifar-10-batches-py`` directory (real or synthetic)."""
    root = Path(batch_dir)
    missing = [f for f in BATCH_FILES if not (root / f).is_file()]
    if missing:
        raise DataError(f"{root}: incomplete CIFAR-10 directory, missing {missing}")
    try:
        parts = [_read_batch(root / f"data_batch_{i}") for i in range(1, 6)]
        val_x, val_y = _read_batch(root / "test_batch")
        meta = _load_pickle(root / "batches.meta")
    except (pickle.UnpicklingError, EOFError, OSError) as exc:
        raise DataError(
            f"{root}: cannot read CIFAR-10 batches ({exc}); delete the directory "
            "and stage the data again"
        ) from exc
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    classes = [str(c) for c in meta.get("label_names", [])] or [str(i) for i in range(10)]
    for name, y in (("train", train_y), ("test", val_y)):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(f"{root}: {name} labels outside [0, {len(classes)})")
    return ArrayDataset(train_x, train_y, val_x, val_y, classes)


def _stage_hint(root: Path, md5: str) -> str:
    return (
        f"To stage it offline, copy {ARCHIVE_NAME} (md5 {md5}) into {root} (or extract it "
        f"so that {root / BATCH_DIR} exists), point data_dir / $SLURMLAB_DATA_DIR at a "
        "directory that has it, or use dataset=synthetic for the generated stand-in."
    )


def _complete(batch_dir: Path) -> bool:
    return all((batch_dir / f).is_file() for f in BATCH_FILES)


def _extract(archive: Path, root: Path) -> None:
    from torchvision.datasets.utils import extract_archive  # seconds to import: only when staging

    try:
        # The archive holds BATCH_DIR/ at its top: unpack into a temp dir, rename that subdir.
        # If another rank or job renamed a complete copy into place first, keep that one. The
        # archive's md5 was checked before, which is what makes unpacking it safe.
        with atomic_path(root / BATCH_DIR, inner=BATCH_DIR, keep_existing=_complete) as tmp:
            extract_archive(archive, tmp)
            if not _complete(tmp / BATCH_DIR):
                raise DataError(f"{archive}: archive does not contain a complete {BATCH_DIR}/")
            readable_by_all(tmp)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"{archive}: cannot extract ({exc}); delete it and stage it again. "
            + _stage_hint(root, CIFAR_MD5)
        ) from exc


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision's download_url connects and reads without a timeout: behind a firewall that
    drops packets rank 0 would hang for minutes instead of printing the staging hint."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(url: str, dest: Path, md5: str, timeout: float = 60.0) -> None:
    from torchvision.datasets.utils import calculate_md5, download_url

    log.info("Downloading %s -> %s", url, dest)
    # download_url writes straight to the name it is given: give it a temp name, which
    # atomic_path removes on error, so a failed or corrupt download leaves nothing behind.
    # (atomic_path also removes a leftover first, which download_url would take as done.)
    with atomic_path(dest) as part, _socket_timeout(timeout):
        try:
            download_url(url, str(part.parent), filename=part.name)
        except (OSError, ValueError) as exc:  # URLError, refused, timed out, bad URL
            raise DataError(
                f"could not download CIFAR-10 from {url}: {exc}. " + _stage_hint(dest.parent, md5)
            ) from exc
        got = calculate_md5(part)
        if got != md5:
            raise DataError(
                f"downloaded {url} has md5 {got}, expected {md5} (truncated or "
                "corrupted download); run again to retry. " + _stage_hint(dest.parent, md5)
            )
        readable_by_all(part)


def ensure_cifar10(
    data_dir: str | os.PathLike[str],
    download: bool = True,
    url: str = CIFAR_URL,
    md5: str = CIFAR_MD5,
) -> Path:
    """Make ``<data_dir>/cifar-10-batches-py`` exist; returns it. Run on one rank only."""
    root = Path(data_dir)
    batch_dir = root / BATCH_DIR
    if _complete(batch_dir):
        return batch_dir
    archive = root / ARCHIVE_NAME
    if not archive.is_file():
        if not download:
            raise DataError(
                f"CIFAR-10 not found in {root} and download=false. " + _stage_hint(root, md5)
            )
        try:
            make_shared_dirs(root)
        except OSError as exc:
            raise DataError(f"cannot create data_dir {root}: {exc}") from exc
        _download(url, archive, md5)
    else:
        from torchvision.datasets.utils import calculate_md5

        got = calculate_md5(archive)
        if got != md5:
            raise DataError(
                f"{archive}: md5 mismatch (got {got}, expected {md5}): the archive is corrupt "
                f"or truncated. Delete it and run again to re-download, or copy a good "
                f"{ARCHIVE_NAME} into {root}."
            )
    _extract(archive, root)
    return batch_dir


def ensure_synthetic(data_dir: str | os.PathLike[str], n_train: int, n_val: int, seed: int) -> Path:
    """Generate ``<data_dir>/synthetic/cifar-10-batches-py`` if missing; returns it."""
    batch_dir = synthetic_root(data_dir) / BATCH_DIR
    if _complete(batch_dir):
        info_path = batch_dir / "synthetic.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            want = {"train": n_train, "val": n_val, "seed": seed}
            if any(info.get(k) != v for k, v in want.items()):
                log.warning(
                    "Existing synthetic set %s was generated with %s; using it as is "
                    "(requested %s). Delete it or use another data_dir to regenerate.",
                    batch_dir,
                    {k: info.get(k) for k in want},
                    want,
                )
        return batch_dir
    try:
        log.info(
            "Generating synthetic dataset (train=%d val=%d seed=%d) in %s",
            n_train,
            n_val,
            seed,
            batch_dir,
        )
        return generate_synthetic(data_dir, n_train, n_val, seed)
    except OSError as exc:
        raise DataError(f"cannot write the synthetic dataset under {data_dir}: {exc}") from exc


def dataset_dir(dataset: str, data_dir: str) -> Path:
    if dataset == "synthetic":
        return synthetic_root(data_dir) / BATCH_DIR
    return Path(data_dir) / BATCH_DIR


def prepare_dataset(
    dataset: str,
    data_dir: str,
    download: bool,
    synthetic_train: int,
    synthetic_val: int,
    synthetic_seed: int,
) -> Path:
    """Stage the dataset (download / extract / generate). Call on rank 0 only."""
    if dataset == "synthetic":
        return ensure_synthetic(data_dir, synthetic_train, synthetic_val, synthetic_seed)
    if dataset == "cifar10":
        return ensure_cifar10(data_dir, download=download)
    raise DataError(f"unknown dataset {dataset!r}")
