"""Each task reports where it ran and what it saw, and writes that into the project folder.

srun python -m example.report results/<job id>      # one file per task
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import tabulate  # the project's own dependency: installed on every node from requirements.txt


def describe() -> dict[str, str]:
    """This task's view of the job, from Slurm's environment."""
    return {
        "rank": os.environ.get("SLURM_PROCID", "0"),
        "host": socket.gethostname(),
        "node": os.environ.get("SLURMD_NODENAME", "?"),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "python": sys.executable,
        "tabulate": tabulate.__version__,
    }


def report(out_dir: str) -> dict[str, str]:
    """Write this task's line into out_dir (relative to the submit directory) and return it."""
    row = describe()
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    table = tabulate.tabulate([list(row.values())], headers=list(row))
    (folder / f"rank{row['rank']}.txt").write_text(table + "\n")
    print(table, flush=True)
    return row


if __name__ == "__main__":
    report(sys.argv[1] if len(sys.argv) > 1 else "results/local")
