"""The two loaders that turn an in-memory :class:`~trainer.data.ArrayDataset` into batches.

* :class:`DeviceLoader` (``loader: fast``): the whole uint8 dataset lives on the training device;
  each epoch a seeded permutation (identical on all ranks) is split between ranks (rank r takes
  positions r, r+W, r+2W, ... so the union of one step's rank batches is exactly the global
  batch of a single process); random crop (4 px zero padding) and horizontal flip are applied
  batched on the device with per-(seed, epoch, rank) parameters.
* :class:`DataLoaderPath` (``loader: dataloader``): a torchvision-style Dataset
  (:class:`CifarDataset`) with per-sample transforms, DistributedSampler (``set_epoch``) and
  DataLoader workers.

Both count their batches the same way (:class:`_ShardedLoader`): training runs full global
batches only, validation shards are ``range(rank, N, W)`` with no padding, so after an
all-reduce every validation sample is counted exactly once. :func:`build_loaders` makes the
training and validation loader of one rank. Reading and staging the data is trainer/data.py's.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.data import MEAN, STD, ArrayDataset, DataError

Batch = tuple[torch.Tensor, torch.Tensor]

__all__ = ["Batch", "CifarDataset", "DataLoaderPath", "DeviceLoader", "build_loaders"]


def _mix(*values: int) -> int:
    """Deterministic 63-bit seed from integers (no Python hash randomisation)."""
    h = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class _ShardedLoader:
    """One rank's share of a dataset: how many batches it yields per epoch, and where and in
    which memory layout they land; the same rules for both loaders."""

    def __init__(
        self,
        n: int,
        *,
        batch_size: int,
        rank: int,
        world: int,
        device: torch.device,
        seed: int,
        train: bool,
        channels_last: bool,
        max_batches: int,
    ) -> None:
        self.n = n
        self.batch_size, self.rank, self.world, self.train = batch_size, rank, world, train
        self.device, self.seed = device, seed
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if train:
            # Full global batches only (the partial last one is dropped): every rank runs the
            # same number of steps, so the DDP collectives stay matched.
            self.full_batches = n // (batch_size * world)
            if self.full_batches == 0:
                raise DataError(
                    f"training set of {n} samples is smaller than one global "
                    f"batch ({batch_size} x {world} ranks); lower batch_size"
                )
        else:
            # The last batch may be partial: the shard range(rank, n, world) is evaluated whole.
            self.full_batches = math.ceil(len(range(rank, n, world)) / batch_size)
        self.max_batches = max_batches if train else 0  # a cap for short runs; training only

    def __len__(self) -> int:
        return min(self.full_batches, self.max_batches) if self.max_batches else self.full_batches

    def iter_from(self, start: int = 0) -> Iterator[Batch]:
        """Batches ``start``, ``start + 1``, ... of this epoch (resume mid-epoch)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)


# ---------------------------------------------------------------- fast path
class DeviceLoader(_ShardedLoader):
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
        super().__init__(
            len(y),
            batch_size=batch_size,
            rank=rank,
            world=world,
            device=device,
            seed=seed,
            train=train,
            channels_last=channels_last,
            max_batches=max_batches,
        )
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        self.y = torch.from_numpy(np.ascontiguousarray(y)).to(device)
        self.augment = augment and train
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255.0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if not self.train:
            return torch.arange(self.rank, self.n, self.world, device=self.device), None, None
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))  # same on every rank
        # cut at full_batches, not len(self): the augmentation draws depend on len(idx), and
        # must not change with max_batches
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


class DataLoaderPath(_ShardedLoader):
    """CifarDataset through DistributedSampler and DataLoader workers, batches moved to device."""

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

        # With drop_last the sampler gives each rank n // world samples, so its full batches
        # are the n // (batch_size * world) that _ShardedLoader counts.
        super().__init__(
            len(y),
            batch_size=batch_size,
            rank=rank,
            world=world,
            device=device,
            seed=seed,
            train=train,
            channels_last=channels_last,
            max_batches=max_batches,
        )
        ds = CifarDataset(x, y, train, augment)
        self.num_workers = num_workers
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
            self.loader = DataLoader(
                ds, batch_size=batch_size, sampler=self.sampler, drop_last=True, **common
            )
        else:
            shard = Subset(ds, list(range(rank, len(ds), world)))
            self.loader = DataLoader(shard, batch_size=batch_size, shuffle=False, **common)

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
    """This rank's (training, validation) loaders: ``fast`` or else ``dataloader``."""
    make: Callable[..., DeviceLoader | DataLoaderPath] = (
        DeviceLoader
        if loader == "fast"
        else functools.partial(DataLoaderPath, num_workers=num_workers)
    )
    common: dict[str, Any] = {
        "rank": rank,
        "world": world,
        "device": device,
        "seed": seed,
        "channels_last": channels_last,
    }
    train = make(
        data.train_x,
        data.train_y,
        batch_size=batch_size,
        train=True,
        augment=augment,
        max_batches=max_batches,
        **common,
    )
    val = make(
        data.val_x, data.val_y, batch_size=eval_batch_size, train=False, augment=False, **common
    )
    return train, val
