"""Launcher variables: how torchrun, Slurm and slurmlab's job files tell a process its place in a
job, and an environment without them.

A process started with :func:`without_launcher_env` runs as a single process even when its
parent is a rank of a job (the benchmarks' and tests' child processes).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["LAUNCHER_PREFIXES", "LAUNCHER_VARS", "is_launcher_var", "without_launcher_env"]

LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "NODE_RANK",
    "NNODES",
)
LAUNCHER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "SLURMLAB_")


def is_launcher_var(name: str) -> bool:
    return name in LAUNCHER_VARS or name.startswith(LAUNCHER_PREFIXES)


def without_launcher_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` minus every launcher variable: a process started with it runs as a single process."""
    return {k: v for k, v in env.items() if not is_launcher_var(k)}
