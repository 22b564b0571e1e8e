"""Driver for test_faults.py, run inside a compute-node container as the job user: wait until a
trainer rank on this node is *in the middle of* writing a checkpoint, and SIGKILL it there.

    python tests/cluster/kill_during_save.py CHECKPOINT_DIR [--timeout S]

A checkpoint is written to ``.<name>.tmp-<node>-<pid>`` and then renamed (trainer/checkpoint.py),
so a temp file named after this node is a save in progress by that pid. Seeing the file and
killing the writer is a race: the write may finish in between. To make the kill land *during*
the save every time, the writer is frozen first (SIGSTOP), the temp file is checked again while
nothing can move, and the writer is killed only if the file is there and already holds data (a
checkpoint cut short, not just an empty file); otherwise the writer is resumed and the watch goes
on. The first save is always let through, so there is a previous checkpoint for the resume to
fall back on.

Prints one line, ``killed PID while writing NAME (BYTES bytes; previous: NAME)``; exits 1 if no
save could be interrupted before the timeout.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

POLL_S = 0.002  # a ResNet50 checkpoint (~190 MB) takes hundreds of ms to write and fsync


def finished_checkpoints(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("ckpt_s*_e*.pt"))


def saves_in_progress(directory: Path, node: str) -> list[tuple[Path, int]]:
    """(temp file, writer pid) for every save by a process on this node."""
    marker = f".tmp-{node}-"
    out = []
    for path in directory.glob(".ckpt_s*.pt.tmp-*"):
        if marker in path.name:
            out.append((path, int(path.name.rsplit("-", 1)[1])))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint_dir", type=Path)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    node = os.uname().nodename
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        previous = finished_checkpoints(args.checkpoint_dir)
        for tmp, pid in saves_in_progress(args.checkpoint_dir, node) if previous else []:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue  # the writer is gone already
            size = tmp.stat().st_size if tmp.exists() else 0
            if size > 0:
                os.kill(pid, signal.SIGKILL)
                cut = f"{tmp.name} ({size} bytes; previous: {previous[-1]})"
                print(f"killed {pid} while writing {cut}")
                return 0
            os.kill(pid, signal.SIGCONT)  # not started writing, or done already: watch on
        time.sleep(POLL_S)
    print(f"no save by a process on {node} cut short in {args.timeout:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
