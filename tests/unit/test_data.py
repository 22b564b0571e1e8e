"""On-disk format, md5-verified staging, synthetic writer, and both loaders' sharding."""

from __future__ import annotations

import functools
import http.server
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import N_TRAIN, N_VAL, REPO
from torchvision.datasets.utils import calculate_md5

from trainer.data import ARCHIVE_NAME, DataError, _download, ensure_cifar10, read_cifar_dir
from trainer.loaders import DataLoaderPath, DeviceLoader
from trainer.synthetic import CLASS_NAMES, make_images, write_cifar_format

CPU = torch.device("cpu")


def test_synthetic_writer_output_loads_via_standard_reader(data_dir: Path) -> None:
    batch_dir = data_dir / "synthetic" / "cifar-10-batches-py"
    ds = read_cifar_dir(batch_dir)
    assert ds.train_x.shape == (N_TRAIN, 3, 32, 32) and ds.train_x.dtype == np.uint8
    assert ds.val_x.shape == (N_VAL, 3, 32, 32)
    assert ds.classes == CLASS_NAMES
    assert np.bincount(ds.train_y, minlength=10).tolist() == [N_TRAIN // 10] * 10
    # exactly the layout torchvision's CIFAR10 reads: str keys, N x 3072 uint8, list of labels
    with open(batch_dir / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert entry["data"].shape == (N_TRAIN // 5, 3072) and entry["data"].dtype == np.uint8
    assert isinstance(entry["labels"], list)
    with open(batch_dir / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="latin1")["label_names"] == CLASS_NAMES
    # the R plane comes first in each row, as in CIFAR-10
    assert np.array_equal(entry["data"][0, :1024].reshape(32, 32), ds.train_x[0, 0])


def test_synthetic_cli(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.synthetic",
            "--out",
            str(tmp_path),
            "--train",
            "50",
            "--val",
            "20",
            "--seed",
            "3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ds = read_cifar_dir(tmp_path / "synthetic" / "cifar-10-batches-py")
    assert len(ds.train_y) == 50 and len(ds.val_y) == 20


def test_synthetic_is_deterministic_and_class_dependent() -> None:
    x1, y1 = make_images(200, seed=5)
    x2, y2 = make_images(200, seed=5)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    means = np.stack([x1[y1 == c].mean(axis=(0, 2, 3)) for c in range(10)])
    assert np.ptp(means, axis=0).max() > 60  # hues differ between classes


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A small archive in the real cifar-10-python.tar.gz layout."""
    src = tmp_path / "src"
    x, y = make_images(60, seed=1)
    write_cifar_format(src / "cifar-10-batches-py", x[:50], y[:50], x[50:], y[50:], CLASS_NAMES)
    path = tmp_path / "upstream" / ARCHIVE_NAME
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # keep the test's output to its own
        pass


@pytest.fixture
def upstream(archive: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An http:// URL of the archive's directory, served from this machine (stands in for
    the real https:// URL: download_url needs an HTTP response, file:// gives none)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy set for the real URL must not apply
    handler = functools.partial(_QuietHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_staged_archive_is_verified_and_extracted(tmp_path: Path, archive: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ARCHIVE_NAME).write_bytes(archive.read_bytes())
    batch_dir = ensure_cifar10(data, download=False, md5=calculate_md5(archive))
    assert len(read_cifar_dir(batch_dir).train_y) == 50


def test_md5_mismatch_of_staged_archive(tmp_path: Path, archive: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ARCHIVE_NAME).write_bytes(archive.read_bytes()[:-100])  # truncated copy
    with pytest.raises(DataError) as info:
        ensure_cifar10(data, download=True, md5=calculate_md5(archive))
    msg = str(info.value)
    assert "md5 mismatch" in msg and "corrupt or truncated" in msg and "Delete it" in msg
    assert not (data / "cifar-10-batches-py").exists()


def test_download_verifies_md5(tmp_path: Path, archive: Path, upstream: str) -> None:
    url = f"{upstream}/{ARCHIVE_NAME}"
    data = tmp_path / "data"
    batch_dir = ensure_cifar10(data, download=True, url=url, md5=calculate_md5(archive))
    assert batch_dir.is_dir() and (data / ARCHIVE_NAME).is_file()
    other = tmp_path / "other"
    with pytest.raises(DataError, match="md5") as info:
        ensure_cifar10(other, download=True, url=url, md5="0" * 32)
    assert "dataset=synthetic" in str(info.value)
    assert list(other.iterdir()) == []  # a bad download is not kept, nor its temp file


def test_stalled_download_times_out_with_the_staging_hint(tmp_path: Path) -> None:
    """A server that accepts but never answers (a firewall dropping packets) must not hang."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/{ARCHIVE_NAME}"
        errors: list[BaseException] = []

        def fetch() -> None:
            try:
                _download(url, tmp_path / ARCHIVE_NAME, "0" * 32, timeout=1.0)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=fetch, daemon=True)
        thread.start()
        thread.join(30)
    assert not thread.is_alive(), "the download hung instead of timing out"
    assert len(errors) == 1 and isinstance(errors[0], DataError), errors
    assert "could not download CIFAR-10" in str(errors[0]) and "dataset=synthetic" in str(errors[0])
    assert list(tmp_path.iterdir()) == []


def test_offline_without_data_explains_how_to_stage(tmp_path: Path, upstream: str) -> None:
    with pytest.raises(DataError) as info:
        ensure_cifar10(tmp_path, download=False)
    msg = str(info.value)
    assert ARCHIVE_NAME in msg and "c58f30108f718f92721af3b95e74349a" in msg
    assert "dataset=synthetic" in msg
    with pytest.raises(DataError, match="could not download CIFAR-10") as info2:
        ensure_cifar10(tmp_path, download=True, url=f"{upstream}/missing.tgz")  # HTTP 404
    assert "copy cifar-10-python.tar.gz" in str(info2.value)


def test_truncated_batch_file_is_reported(tmp_path: Path) -> None:
    x, y = make_images(30, seed=2)
    d = tmp_path / "cifar-10-batches-py"
    write_cifar_format(d, x[:20], y[:20], x[20:], y[20:], CLASS_NAMES)
    raw = (d / "data_batch_2").read_bytes()
    (d / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot read CIFAR-10 batches"):
        read_cifar_dir(d)


def _fast(
    x: np.ndarray,
    y: np.ndarray,
    rank: int,
    world: int,
    batch: int,
    train: bool = True,
    augment: bool = False,
) -> DeviceLoader:
    return DeviceLoader(
        x,
        y,
        batch_size=batch,
        rank=rank,
        world=world,
        device=CPU,
        seed=3,
        train=train,
        augment=augment,
    )


def test_fast_loader_rank_batches_union_is_the_global_batch() -> None:
    n = 100
    x = np.zeros((n, 3, 32, 32), np.uint8)
    y = np.arange(n, dtype=np.int64)  # labels identify samples
    for world in (2, 4):
        single = [yb.tolist() for _, yb in _fast(x, y, 0, 1, 4 * world)]
        shards = [[yb.tolist() for _, yb in _fast(x, y, r, world, 4)] for r in range(world)]
        assert all(len(s) == len(single) for s in shards)
        for step, global_batch in enumerate(single):
            union = sorted(v for s in shards for v in s[step])
            assert union == sorted(global_batch)
    # a different epoch gives a different permutation, identical on every rank
    loader = _fast(x, y, 0, 1, 10)
    first = next(iter(loader))[1].tolist()
    loader.set_epoch(1)
    assert next(iter(loader))[1].tolist() != first


def test_fast_loader_validation_counts_every_sample_once() -> None:
    n = 103  # not divisible by the world size or the batch
    x = np.zeros((n, 3, 32, 32), np.uint8)
    y = np.arange(n, dtype=np.int64)
    seen = [
        v for r in range(4) for _, yb in _fast(x, y, r, 4, 10, train=False) for v in yb.tolist()
    ]
    assert sorted(seen) == list(range(n))


def test_fast_loader_resume_mid_epoch_yields_the_rest() -> None:
    x = np.random.default_rng(0).integers(0, 255, (64, 3, 32, 32), dtype=np.uint8)
    y = np.arange(64, dtype=np.int64)
    loader = _fast(x, y, 0, 1, 8, augment=True)
    loader.set_epoch(2)
    full = list(loader)
    rest = list(loader.iter_from(3))
    assert len(rest) == len(full) - 3
    for (xa, ya), (xb, yb) in zip(full[3:], rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_device_crop_and_flip() -> None:
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8)
    x = x.view(2, 3, 32, 32)
    loader = _fast(np.zeros((8, 3, 32, 32), np.uint8), np.zeros(8, np.int64), 0, 1, 4)
    centre = torch.tensor([[4, 4], [4, 4]])
    out = loader._crop_flip(x, centre, torch.tensor([False, True]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    shifted = loader._crop_flip(x, torch.tensor([[0, 8], [8, 0]]), torch.tensor([False, False]))
    assert torch.equal(shifted[0, :, 4:, :28], x[0, :, :28, 4:])  # moved down 4, left 4
    assert shifted[0, :, :4].sum() == 0 and shifted[0, :, :, 28:].sum() == 0  # zero padding
    assert torch.equal(shifted[1, :, :28, 4:], x[1, :, 4:, :28])


def test_dataloader_path_shards() -> None:
    n = 103
    x = np.zeros((n, 3, 32, 32), np.uint8)
    y = np.arange(n, dtype=np.int64)

    def make(rank: int, train: bool) -> DataLoaderPath:
        return DataLoaderPath(
            x,
            y,
            batch_size=8,
            rank=rank,
            world=2,
            device=CPU,
            seed=0,
            train=train,
            augment=train,
            num_workers=0,
        )

    train = [make(r, True) for r in range(2)]
    for t in train:
        t.set_epoch(0)
    batches = [[yb.tolist() for _, yb in t] for t in train]
    assert len(batches[0]) == len(batches[1]) == len(train[0]) == 51 // 8
    flat = [v for b in batches for batch in b for v in batch]
    assert len(flat) == len(set(flat))  # ranks see disjoint samples
    rest = [yb.tolist() for _, yb in train[0].iter_from(2)]
    assert rest == batches[0][2:]
    seen = [v for r in range(2) for _, yb in make(r, False) for v in yb.tolist()]
    assert sorted(seen) == list(range(n))
    xb, _ = next(iter(train[0]))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32
