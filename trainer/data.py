"""CIFAR-10 on disk (reader, md5-verified download/extract, synthetic stand-in) and two loaders.

* :class:`DeviceLoader` (``loader: fast``): the whole uint8 dataset lives on the training device;
  each epoch a seeded permutation (identical on all ranks) is split between ranks (rank r takes
  positions r, r+W, r+2W, ... so the union of one step's rank batches is exactly the global
  batch of a single process); random crop (4 px zero padding) and horizontal flip are applied
  batched on the device with per-(seed, epoch, rank) parameters.
* :class:`DataLoaderPath` (``loader: dataloader``): a torchvision-style Dataset with per-sample
  transforms, DistributedSampler (``set_epoch``) and DataLoader workers.

Validation shards are ``range(rank, N, W)`` with no padding, so after an all-reduce every
validation sample is counted exactly once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.synthetic import BATCH_DIR, generate_synthetic, synthetic_root

log = logging.getLogger("trainer")

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

Batch = tuple[torch.Tensor, torch.Tensor]

__all__ = [
    "ArrayDataset",
    "DataError",
    "DataLoaderPath",
    "DeviceLoader",
    "build_loaders",
    "dataset_dir",
    "ensure_cifar10",
    "ensure_synthetic",
    "md5sum",
    "prepare_dataset",
    "read_cifar_dir",
]


class DataError(RuntimeError):
    """Data is missing, corrupt or cannot be fetched; the message says how to fix it."""


@dataclass
class ArrayDataset:
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


def md5sum(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stage_hint(root: Path, md5: str) -> str:
    return (
        f"To stage it offline, copy {ARCHIVE_NAME} (md5 {md5}) into {root} (or extract it "
        f"so that {root / BATCH_DIR} exists), point data_dir / $SLURMLAB_DATA_DIR at a "
        "directory that has it, or use dataset=synthetic for the generated stand-in."
    )


def _complete(batch_dir: Path) -> bool:
    return all((batch_dir / f).is_file() for f in BATCH_FILES)


def _extract(archive: Path, root: Path) -> None:
    tmp = root / f".extract-{os.uname().nodename}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                for m in tar.getmembers():
                    if m.name.startswith("/") or ".." in Path(m.name).parts:
                        raise DataError(f"{archive}: unsafe path {m.name!r} in archive")
                tar.extractall(tmp)
        if not _complete(tmp / BATCH_DIR):
            raise DataError(f"{archive}: archive does not contain a complete {BATCH_DIR}/")
        try:
            os.rename(tmp / BATCH_DIR, root / BATCH_DIR)
        except OSError:
            if not _complete(root / BATCH_DIR):
                raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"{archive}: cannot extract ({exc}); delete it and stage it again. "
            + _stage_hint(root, CIFAR_MD5)
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(url: str, dest: Path, md5: str, timeout: float = 60.0) -> None:
    part = dest.with_name(f"{dest.name}.part-{os.uname().nodename}-{os.getpid()}")
    log.info("Downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
            shutil.copyfileobj(resp, f, 1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DataError(
            f"could not download CIFAR-10 from {url}: {exc}. " + _stage_hint(dest.parent, md5)
        ) from exc
    got = md5sum(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise DataError(
            f"downloaded {url} has md5 {got}, expected {md5} (truncated or "
            "corrupted download); run again to retry. " + _stage_hint(dest.parent, md5)
        )
    os.replace(part, dest)


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
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create data_dir {root}: {exc}") from exc
        _download(url, archive, md5)
    else:
        got = md5sum(archive)
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


# ---------------------------------------------------------------- fast path
def _mix(*values: int) -> int:
    """Deterministic 63-bit seed from integers (no Python hash randomisation)."""
    h = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class DeviceLoader:
    """Whole dataset as a uint8 tensor on ``device``; batched on-device augmentation."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        batch_size: int,
        rank: int,
        world: int,
        device: torch.device,
        seed: int,
        train: bool,
        augment: bool,
        channels_last: bool = False,
        max_batches: int = 0,
    ) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        self.y = torch.from_numpy(np.ascontiguousarray(y)).to(device)
        self.n = len(self.y)
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.device, self.seed, self.train = device, seed, train
        self.augment = augment and train
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255.0
        self.epoch = 0
        self.full_batches = self.n // (batch_size * world) if train else 0
        if train and self.full_batches == 0:
            raise DataError(
                f"training set of {self.n} samples is smaller than one global "
                f"batch ({batch_size} x {world} ranks); lower batch_size"
            )
        self.max_batches = max_batches

    def __len__(self) -> int:
        if not self.train:
            return math.ceil(len(range(self.rank, self.n, self.world)) / self.batch_size)
        return min(self.full_batches, self.max_batches) if self.max_batches else self.full_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if not self.train:
            return torch.arange(self.rank, self.n, self.world, device=self.device), None, None
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))  # same on every rank
        usable = self.full_batches * self.batch_size * self.world
        idx = torch.randperm(self.n, generator=g)[self.rank : usable : self.world]
        shifts = flips = None
        if self.augment:
            ga = torch.Generator().manual_seed(_mix(self.seed, self.epoch, self.rank, 1))
            shifts = torch.randint(0, 9, (len(idx), 2), generator=ga).to(self.device)
            flips = (torch.rand(len(idx), generator=ga) < 0.5).to(self.device)
        return idx.to(self.device), shifts, flips

    def _crop_flip(
        self, xb: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor
    ) -> torch.Tensor:
        """Random 32x32 crop of the 4-px zero-padded batch plus horizontal flip, one gather."""
        b = xb.shape[0]
        padded = F.pad(xb, (4, 4, 4, 4))
        ar = torch.arange(32, device=xb.device)
        rows = shifts[:, 0:1] + ar  # b x 32
        cols = shifts[:, 1:2] + torch.where(flips[:, None], 31 - ar, ar)
        bi = torch.arange(b, device=xb.device)[:, None, None, None]
        ci = torch.arange(3, device=xb.device)[None, :, None, None]
        return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]

    def iter_from(self, start: int = 0) -> Iterator[Batch]:
        idx, shifts, flips = self._plan()
        for b in range(start, len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            xb = self.x[idx[sl]]
            if shifts is not None and flips is not None:
                xb = self._crop_flip(xb, shifts[sl], flips[sl])
            xb = ((xb.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            yield xb, self.y[idx[sl]]

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)


# ---------------------------------------------------------------- DataLoader path
class CifarDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """torchvision-style dataset over uint8 CHW arrays with a per-sample transform."""

    def __init__(self, x: np.ndarray, y: np.ndarray, train: bool, augment: bool) -> None:
        from torchvision.transforms import v2

        self.x, self.y = x, y
        ops: list[Any] = []
        if train and augment:
            ops += [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
        self.transform = v2.Compose(ops)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(torch.from_numpy(self.x[i])), int(self.y[i])


class _ResumableSampler(torch.utils.data.distributed.DistributedSampler):  # type: ignore[type-arg]
    """DistributedSampler that can start mid-epoch (skips the first ``start`` indices)."""

    start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class DataLoaderPath:
    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        batch_size: int,
        rank: int,
        world: int,
        device: torch.device,
        seed: int,
        train: bool,
        augment: bool,
        num_workers: int,
        channels_last: bool = False,
        max_batches: int = 0,
    ) -> None:
        from torch.utils.data import DataLoader, Subset

        ds = CifarDataset(x, y, train, augment)
        self.device, self.train, self.batch_size = device, train, batch_size
        self.seed, self.rank, self.num_workers = seed, rank, num_workers
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator()
        common: dict[str, Any] = {
            "num_workers": num_workers,
            "pin_memory": device.type == "cuda",
            "generator": self.generator,
        }
        self.sampler: _ResumableSampler | None = None
        if train:
            self.sampler = _ResumableSampler(
                ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
            )
            self.full_batches = self.sampler.num_samples // batch_size
            if self.full_batches == 0:
                raise DataError(
                    f"training set of {len(ds)} samples is smaller than one global "
                    f"batch ({batch_size} x {world} ranks); lower batch_size"
                )
            self.loader = DataLoader(
                ds, batch_size=batch_size, sampler=self.sampler, drop_last=True, **common
            )
        else:
            shard = Subset(ds, list(range(rank, len(ds), world)))
            self.full_batches = math.ceil(len(shard) / batch_size)
            self.loader = DataLoader(shard, batch_size=batch_size, shuffle=False, **common)
        self.max_batches = max_batches if train else 0

    def __len__(self) -> int:
        return min(self.full_batches, self.max_batches) if self.max_batches else self.full_batches

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(_mix(self.seed, epoch, self.rank, 2))  # worker base seeds
        if self.train and self.num_workers == 0:  # transforms then draw from the global RNG
            torch.manual_seed(_mix(self.seed, epoch, self.rank, 3))

    def iter_from(self, start: int = 0) -> Iterator[Batch]:
        if self.sampler is not None:
            self.sampler.start = start * self.batch_size
        try:
            n = len(self) - start
            for i, (xb, yb) in enumerate(self.loader):
                if i >= n:
                    break
                xb = xb.to(self.device, non_blocking=True)
                yield (
                    xb.contiguous(memory_format=self.memory_format),
                    yb.to(self.device, non_blocking=True),
                )
        finally:
            if self.sampler is not None:
                self.sampler.start = 0

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)


def build_loaders(
    data: ArrayDataset,
    *,
    loader: str,
    batch_size: int,
    eval_batch_size: int,
    rank: int,
    world: int,
    device: torch.device,
    seed: int,
    augment: bool,
    num_workers: int,
    channels_last: bool,
    max_batches: int,
) -> tuple[DeviceLoader | DataLoaderPath, DeviceLoader | DataLoaderPath]:
    common: dict[str, Any] = {
        "rank": rank,
        "world": world,
        "device": device,
        "seed": seed,
        "channels_last": channels_last,
    }
    if loader == "fast":
        train = DeviceLoader(
            data.train_x,
            data.train_y,
            batch_size=batch_size,
            train=True,
            augment=augment,
            max_batches=max_batches,
            **common,
        )
        val = DeviceLoader(
            data.val_x, data.val_y, batch_size=eval_batch_size, train=False, augment=False, **common
        )
        return train, val
    train_dl = DataLoaderPath(
        data.train_x,
        data.train_y,
        batch_size=batch_size,
        train=True,
        augment=augment,
        num_workers=num_workers,
        max_batches=max_batches,
        **common,
    )
    val_dl = DataLoaderPath(
        data.val_x,
        data.val_y,
        batch_size=eval_batch_size,
        train=False,
        augment=False,
        num_workers=num_workers,
        **common,
    )
    return train_dl, val_dl
