"""Shared fixtures: clean launcher environment, a tiny synthetic dataset, rank launchers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Small enough for 2 shared cores, large enough for a meaningful accuracy check.
N_TRAIN, N_VAL = 1280, 320


def _scrubbed(env: Mapping[str, str]) -> dict[str, str]:
    from trainer.launch_env import without_launcher_env

    return without_launcher_env(env)


@pytest.fixture(autouse=True)
def clean_launch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the launcher / Slurm variables of the shell that runs pytest."""
    from trainer.launch_env import is_launcher_var

    for key in list(os.environ):
        if is_launcher_var(key):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding the synthetic set (generated once per session)."""
    from trainer.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, N_TRAIN, N_VAL, seed=0)
    return root


def base_overrides(data_dir: Path, out: Path, **extra: Any) -> list[str]:
    """Overrides for a tiny CPU run of SimpleCNN on the session's synthetic set."""
    values: dict[str, Any] = {
        "model": "simple_cnn",
        "dataset": "synthetic",
        "data_dir": data_dir,
        "synthetic_train": N_TRAIN,
        "synthetic_val": N_VAL,
        "output_dir": out,
        "epochs": 2,
        "batch_size": 32,
        "eval_batch_size": 160,
        "lr": 0.2,
        "lr_reference_batch": 256,
        "schedule": "onecycle",
        "warmup_epochs": 0.5,
        "log_every": 10,
        "plot": False,
        "keep_checkpoints": 0,
        "dist_timeout_s": 120,
        "cpu_threads": 1,  # one thread: robust on a shared, busy 2-core host
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def make_cfg(data_dir: Path, out: Path, **extra: Any) -> Any:
    from trainer.config import load_config

    return load_config(None, base_overrides(data_dir, out, **extra))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ranks:
    """N local processes of ``python -m trainer``, started with torchrun- or Slurm-style env."""

    def __init__(
        self,
        n: int,
        overrides: list[str],
        log_dir: Path,
        style: str = "torchrun",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.logs = [log_dir / f"rank{r}.log" for r in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        for r in range(n):
            env = _scrubbed(os.environ)
            env.update(
                {
                    "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": str(REPO),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(self.port),
                    "PYTHONUNBUFFERED": "1",
                }
            )
            if style == "torchrun":
                env.update(
                    {
                        "RANK": str(r),
                        "WORLD_SIZE": str(n),
                        "LOCAL_RANK": str(r),
                        "LOCAL_WORLD_SIZE": str(n),
                    }
                )
            elif style == "slurm":
                env.update(
                    {
                        "SLURM_PROCID": str(r),
                        "SLURM_NTASKS": str(n),
                        "SLURM_LOCALID": str(r),
                        "SLURM_NODEID": "0",
                        "SLURM_JOB_NUM_NODES": "1",
                        "SLURM_NTASKS_PER_NODE": str(n),
                        "SLURM_STEP_ID": "0",
                        "SLURM_JOB_ID": "4242",
                        "SLURM_JOB_NODELIST": "localhost",
                    }
                )
            else:
                raise ValueError(style)
            env.update(extra_env or {})
            with open(self.logs[r], "wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "trainer", *overrides],
                        cwd=REPO,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def log(self, r: int = 0) -> str:
        return self.logs[r].read_text(errors="replace")

    def wait(self, timeout: float = 240.0) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        try:
            for p in self.procs:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("ranks timed out:\n" + self.all_logs())
        return codes

    def wait_for_text(self, text: str, r: int = 0, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(r):
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"{text!r} never appeared in rank {r}'s output:\n" + self.all_logs())

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()

    def all_logs(self) -> str:
        return "\n".join(f"--- rank {r} ---\n{self.log(r)[-4000:]}" for r in range(len(self.logs)))


@pytest.fixture
def ranks_factory() -> Iterator[Any]:
    started: list[Ranks] = []

    def start(*args: Any, **kwargs: Any) -> Ranks:
        r = Ranks(*args, **kwargs)
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()
