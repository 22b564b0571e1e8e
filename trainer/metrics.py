"""Metrics: JSONL records (rank 0) and a one-line host resource summary (psutil)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil

from trainer.files import atomic_path

__all__ = ["MetricsWriter", "host_stats_line", "read_metrics"]


class MetricsWriter:
    """Appends one JSON object per line to ``<output_dir>/metrics.jsonl`` (rank 0 only)."""

    def __init__(self, path: str | os.PathLike[str], enabled: bool) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, global_step: int) -> None:
        """On resume: drop records logged after the checkpoint we resume from (they will be
        produced again), so the file holds one history. Rewritten atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= global_step]
        with atomic_path(self.path) as tmp, open(tmp, "w") as f:
            for rec in kept:
                f.write(json.dumps(rec) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file; a torn last line (crash mid-write) is ignored."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


_PROC = psutil.Process()
_PROC.cpu_percent(None)  # prime: the next call reports usage since import


def host_stats_line() -> str:
    vm = psutil.virtual_memory()
    rss = _PROC.memory_info().rss
    gib = float(1 << 30)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"Host: rss={rss / gib:.2f} GiB, mem used={vm.percent:.0f}% "
        f"({(vm.total - vm.available) / gib:.1f}/{vm.total / gib:.1f} GiB), "
        f"process cpu={_PROC.cpu_percent(None):.0f}%, load1={load:.2f}, "
        f"cpus={psutil.cpu_count()}"
    )


def host_stats() -> dict[str, float]:
    vm = psutil.virtual_memory()
    return {
        "rss_gib": round(_PROC.memory_info().rss / float(1 << 30), 3),
        "mem_percent": vm.percent,
    }
