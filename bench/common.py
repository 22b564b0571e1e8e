"""What the benchmarks share: host facts, children's environment, rounds, memory, tables, checks."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil
import torch

from trainer.launch_env import without_launcher_env

REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"-?[\d,]*\.?\d+(e[+-]?\d+)?[%x]?")  # a table cell to right-align
K = TypeVar("K", bound=Hashable)
R = TypeVar("R")
Num = float | None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))  # the cores this process may run on


def load_line() -> str:
    """How busy the host is: benchmarks on shared hosts are noisy."""
    load = os.getloadavg()
    line = f"host: {cpu_count()} usable cores, load average "
    line += " / ".join(f"{x:.2f}" for x in load) + " (1/5/15 min)"
    if load[0] > cpu_count():
        line += " - oversubscribed: other processes compete for the cores, so CPU figures are "
        line += "depressed and noisy (multi-threaded OpenMP steps suffer most)"
    return line


@contextlib.contextmanager
def child_environ(device_type: str, **extra: str) -> Iterator[None]:
    """os.environ, for the children started inside, without launcher variables (a child is what
    the bench starts, whatever shell ran it), no GPU for a CPU run, plus ``extra``."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(without_launcher_env(saved), **extra)
    if device_type == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def best_of_rounds(
    keys: Iterable[K], rounds: int, run: Callable[[K], R], score: Callable[[R], float]
) -> dict[K, R]:
    """Every key's best (highest ``score``) of ``rounds`` runs, the order reversing each round
    (a, b, c, then c, b, a) so that every key sees the same drift in the host's load."""
    order, best = list(dict.fromkeys(keys)), {}
    for r in range(max(1, rounds)):
        for key in order if r % 2 == 0 else reversed(order):
            result = run(key)
            if key not in best or score(result) > score(best[key]):
                best[key] = result
    return best


def forever(loader: Iterable[R]) -> Iterator[R]:
    """A loader's batches across epochs (``set_epoch`` first, as the trainer does)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[list[int]]:
    """The block's peak memory: CUDA's max allocated, or the largest RSS of us + our children."""
    gc.collect()  # the previous run's garbage is not this one's memory
    box, stop, me = [0], threading.Event(), psutil.Process()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        yield box
        box[0] = torch.cuda.max_memory_allocated(device)
        return

    def watch() -> None:
        while True:
            with contextlib.suppress(psutil.Error):  # a worker that exits while it is read
                rss = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])
                box[0] = max(box[0], rss)
            if stop.is_set():
                return
            stop.wait(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A plain-text table under ``title``; numeric columns right-aligned."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        bool(rows) and all(NUMBER.fullmatch(r[i]) for r in cells[1:]) for i in range(len(widths))
    ]

    def line(row: Sequence[str]) -> str:
        parts = zip(row, widths, numeric, strict=True)
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in parts).rstrip()

    lines = [line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])]
    return "\n".join([title, *lines] if title else lines)


def check(
    name: str, value: Num, target: Num, unit: str = "", *, lower: bool = False, note: str = ""
) -> dict[str, Any]:
    """Print one target's PASS / MISS (``lower``: at most), or N/A with the reason in ``note``."""
    if value is None or target is None:
        status, line = "N/A", f"N/A   {name}: {note}".rstrip(": ")
    else:
        status = "PASS" if (value <= target if lower else value >= target) else "MISS"
        line = f"{status:<5} {name}: {value:.3g}{unit} {'<=' if lower else '>='} {target:.3g}{unit}"
        line += f"  ({note})" if note else ""
    print(line)
    return {"name": name, "status": status, "value": value, "target": target}
