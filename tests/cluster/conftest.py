"""A real, throwaway slurmlab cluster for end-to-end tests.

The cluster runs under its own Compose project (``slurmlab-test``) so the tests never touch a
user's cluster. It is created from nothing (``make clean up``) once per test session; the last test
module (``test_zz_teardown.py``) removes it and asserts nothing is left running.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = os.environ.get("SLURMLAB_TEST_PROJECT", "slurmlab-test")
JOB_USER = "slurmlab"


def compose_command() -> list[str]:
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ["docker", "compose"] if v2.returncode == 0 else ["docker-compose"]


def make(*targets: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """Run a Makefile target against the test project (what a user types, on another project)."""
    return subprocess.run(
        ["make", *targets, f"COMPOSE_PROJECT_NAME={PROJECT}"],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


@dataclass
class Cluster:
    project: str
    compose: list[str] = field(default_factory=compose_command)
    up_seconds: float = 0.0

    def dc(
        self, *args: str, timeout: float = 300, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*self.compose, "-p", self.project, *args]
        proc = subprocess.run(
            cmd, cwd=REPO, text=True, capture_output=True, timeout=timeout, input=stdin
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def run(
        self,
        script: str,
        service: str = "slurmctld",
        user: str | None = JOB_USER,
        check: bool = True,
        timeout: float = 300,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash script in a container; as the job user from /workspace by default."""
        args = ["exec", "-T"]
        if user:
            args += ["-u", user]
        args += [service, "bash", "-c", f"cd /workspace && {script}"]
        return self.dc(*args, timeout=timeout, check=check, stdin=stdin)

    def login(self, script: str, **kwargs: object) -> str:
        """stdout of a script run on the login node (slurmctld) as the job user."""
        return self.run(script, **kwargs).stdout  # type: ignore[arg-type]

    def node_names(self) -> list[str]:
        return self.login("sinfo -h -N -o %N").split()

    def write(self, path: str, content: str) -> str:
        """Write a file on the shared filesystem as the job user."""
        self.run(f"mkdir -p $(dirname {path}) && cat > {path}", stdin=content)
        return path

    def sbatch(
        self, args: str, script: str | None = None, timeout: float = 600, env: str = ""
    ) -> tuple[int, int]:
        """Submit with --wait (a script body, or a job file in args); return (job id, exit code).

        env ("NAME=value ...") reaches the job through sbatch's default --export=ALL. Never
        --export=ALL,NAME=value here: that makes slurmd load the user's login environment in a
        new mount namespace, which an unprivileged container cannot create (slurmd dies).
        """
        if script is not None:
            args += " " + self.write(self.tmp_path("job") + ".sh", "#!/bin/bash\n" + script)
        proc = self.run(f"{env} sbatch --parsable --wait {args}", check=False, timeout=timeout)
        first = proc.stdout.strip().splitlines()
        assert first, f"sbatch printed no job id:\n{proc.stderr}"
        return int(first[0].split(";")[0]), proc.returncode

    def sacct(
        self, job: int, fields: str = "State,NNodes,ExitCode", wait_s: float = 60
    ) -> list[str]:
        """The job's allocation line from accounting, once it has a final state."""
        deadline = time.monotonic() + wait_s
        while True:
            out = self.login(f"sacct -X -n -P -j {job} -o {fields}").strip()
            if out and out.split("|")[0] not in {"PENDING", "RUNNING", "REQUEUED", "COMPLETING"}:
                return out.split("|")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job} has no final accounting record after {wait_s} s: {out!r}"
                )
            time.sleep(1)

    def submit(self, args: str, env: str = "") -> int:
        """sbatch without waiting; return the job id (env: as for sbatch())."""
        return int(self.login(f"{env} sbatch --parsable {args}").strip().split(";")[0])

    def state(self, job: int) -> str:
        """The job's state as the controller sees it (sacct once it has left the queue)."""
        return self.queued_state(job) or self.login(f"sacct -X -n -P -j {job} -o State").strip()

    def queued_state(self, job: int) -> str:
        """The job's state in the queue, "" once it has left (squeue fails for unknown ids)."""
        return self.run(f"squeue -h -j {job} -o %T", check=False).stdout.strip()

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(1)

    def wait_log(self, path: str, pattern: str, timeout: float = 300) -> None:
        """Wait until a file on /shared matches a regex (grep -E)."""
        self.wait_for(
            f"{pattern!r} in {path}",
            lambda: (
                self.run(f"grep -qE {shlex.quote(pattern)} {path}", check=False).returncode == 0
            ),
            timeout,
        )

    def wait_done(self, job: int, timeout: float = 600) -> list[str]:
        self.wait_for(
            f"job {job} to leave the queue",
            lambda: not self.queued_state(job),
            timeout,
        )
        return self.sacct(job)

    def tmp_path(self, stem: str) -> str:
        """A fresh path under /shared, visible at the same place on every node."""
        return f"/shared/tests/{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    subprocess.run(
        ["make", "clean", f"COMPOSE_PROJECT_NAME={PROJECT}"],
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    started = time.monotonic()
    proc = make("up")
    if proc.returncode != 0:
        pytest.fail(f"make up failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    c = Cluster(PROJECT, up_seconds=time.monotonic() - started)
    c.run("mkdir -p /shared/tests/logs")
    yield c
