"""Atomic writes: a file or directory appears under its final name complete, or not at all.

Checkpoints, metrics.jsonl, curves.png, the downloaded archive and the staged datasets are read
by other processes (other ranks, other nodes, a later attempt) while they may be being written,
and a writer may be killed at any moment (preemption, time limit). Each is therefore written
under a temp name beside its destination and renamed into place, which is atomic within one
filesystem. The temp name is ``.<name>.tmp-<host>-<pid>``: hidden, never matching the final
name's pattern, and unique per writer because several nodes share the filesystem (pids alone
collide across nodes). tests/cluster/kill_during_save.py relies on this form.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_path", "make_shared_dirs", "readable_by_all", "remove_stale_temps", "temp_path"]

_TMP_INFIX = ".tmp-"


def temp_path(dest: str | os.PathLike[str]) -> Path:
    """This process's temp name for ``dest``, in the same directory (a rename stays atomic)."""
    d = Path(dest)
    return d.with_name(f".{d.name}{_TMP_INFIX}{os.uname().nodename}-{os.getpid()}")


def _remove(path: Path) -> None:
    """Best-effort removal of a temp file or directory (cleanup must not mask the real error)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _fsync(path: Path, *, strict: bool) -> None:
    """fsync ``path`` (a file's data, or a directory's entries). Some filesystems refuse fsync
    on a directory; ``strict=False`` tolerates that, since the data itself is already synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    dest: str | os.PathLike[str],
    *,
    durable: bool = False,
    inner: str | None = None,
    keep_existing: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; the body creates a file or a directory there.

    On success it is renamed onto ``dest`` (replacing a file; a directory can only replace an
    empty one or none). On failure, and after success, whatever is left at the temp path is
    removed. A leftover from an earlier process with the same host and pid is removed first.

    * ``durable``: fsync the temp file before the rename and the directory after it, so the new
      content survives a power loss or node crash (checkpoints).
    * ``inner``: rename ``<temp>/<inner>`` instead of the temp path itself, for an archive that
      holds the wanted directory one level down; the rest of the temp directory is discarded.
    * ``keep_existing``: called with ``dest`` when the rename fails; if it returns True, another
      writer finished first with an equivalent result (e.g. a complete dataset directory), so
      the failure is not an error and the existing copy is kept.
    """
    final = Path(dest)
    tmp = temp_path(final)
    _remove(tmp)
    try:
        yield tmp
        src = tmp / inner if inner else tmp
        if durable:
            _fsync(src, strict=True)
        try:
            os.replace(src, final)
        except OSError:
            if keep_existing is None or not keep_existing(final):
                raise
        if durable:
            _fsync(final.parent, strict=False)
    finally:
        _remove(tmp)


def remove_stale_temps(directory: str | os.PathLike[str], name_glob: str, max_age_s: float) -> None:
    """Remove temp paths of destinations matching ``name_glob`` untouched for ``max_age_s``.

    A writer that died mid-write (SIGKILL, node crash) leaves its temp path behind. A live
    writer on another node cannot be asked, so age is the test: pick ``max_age_s`` well above
    the longest write.
    """
    for stale in Path(directory).glob(f".{name_glob}{_TMP_INFIX}*"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > max_age_s:
                _remove(stale)


# Datasets are staged once and read by every user's jobs (a site's shared datasets folder),
# whatever the umask of whoever staged them (077 makes run directories and logs private): a
# dataset is written readable by all. Runs, checkpoints and logs keep the user's umask.
def readable_by_all(path: str | os.PathLike[str]) -> None:
    """chmod a+rX over a file, or a tree, this process just wrote."""
    if not os.path.isdir(path):
        os.chmod(path, os.stat(path).st_mode | 0o444)
        return
    for root, _dirs, files in os.walk(path):
        os.chmod(root, os.stat(root).st_mode | 0o555)
        for name in files:
            full = os.path.join(root, name)
            os.chmod(full, os.stat(full).st_mode | 0o444)


def make_shared_dirs(path: str | os.PathLike[str]) -> None:
    """mkdir -p whose new folders every user may read and enter (not write)."""
    target = Path(path)
    missing = [p for p in (target, *target.parents) if not p.exists()]
    target.mkdir(parents=True, exist_ok=True)
    for folder in missing:
        with contextlib.suppress(OSError):  # another user's job made it first: theirs to set
            os.chmod(folder, os.stat(folder).st_mode | 0o555)
