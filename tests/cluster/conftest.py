"""A real, throwaway slurmlab cluster for end-to-end tests.

The cluster runs under its own Compose project (``slurmlab-test``) so the tests never touch a
user's cluster. It is created from nothing (``make clean up``) once per test session; the last test
module (``test_zz_teardown.py``) removes it and asserts nothing is left running.

Tests drive it the way a user does: ``make`` targets on the host, and commands typed in
``make shell`` (a login shell as the job user, in the checkout) for everything inside.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = os.environ.get("SLURMLAB_TEST_PROJECT", "slurmlab-test")
JOB_USER = "slurmlab"
# Services that never see the project (docker-compose.yml): only Slurm's config and their secrets.
ACCOUNTING_TIER = ("mariadb", "slurmdbd")
# An ordinary user's uid that the image does not know: the checkout's owner in a user's clone.
CHECKOUT_UID = 1234


def env_file(repo: Path = REPO) -> dict[str, str]:
    """The settings in .env (the one source of truth for build and run settings)."""
    return dict(
        line.split("=", 1)
        for line in (repo / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


SHARED = env_file()["SLURMLAB_SHARED"]  # the cluster's shared filesystem, as jobs see it


def copy_checkout(dest: Path, uid: int) -> Path:
    """Copy the working tree (tracked and untracked, not ignored files) to dest, owned by uid."""
    shutil.rmtree(dest, ignore_errors=True)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for root, dirs, names in os.walk(dest):
        for name in [*dirs, *names]:
            os.chown(os.path.join(root, name), uid, uid)
    os.chown(dest, uid, uid)
    return dest


def user_checkout() -> Path:
    """The checkout the test cluster mounts, owned by an ordinary user as a user's clone is.

    As root (CI runs in a root-owned clone) the tests copy the working tree into a directory
    owned by CHECKOUT_UID; otherwise the repository itself already belongs to the user.
    """
    if os.geteuid() != 0:
        return REPO
    return copy_checkout(Path(tempfile.gettempdir()) / f"{PROJECT}-checkout", CHECKOUT_UID)


CHECKOUT = user_checkout()


def compose_command() -> list[str]:
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ["docker", "compose"] if v2.returncode == 0 else ["docker-compose"]


def make(
    *targets: str, timeout: float = 3600, checkout: Path = CHECKOUT, project: str = PROJECT
) -> subprocess.CompletedProcess[str]:
    """Run a Makefile target against the test project (what a user types, on another project)."""
    return subprocess.run(
        ["make", *targets, f"COMPOSE_PROJECT_NAME={project}"],
        cwd=checkout,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


@dataclass
class Cluster:
    project: str
    checkout: Path = CHECKOUT
    compose: list[str] = field(default_factory=compose_command)
    up_seconds: float = 0.0

    def dc(
        self, *args: str, timeout: float = 300, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*self.compose, "-p", self.project, *args]
        # Compose reads the project name from the environment too, for the paths it derives.
        env = {**os.environ, "COMPOSE_PROJECT_NAME": self.project}
        proc = subprocess.run(
            cmd,
            cwd=self.checkout,
            text=True,
            capture_output=True,
            timeout=timeout,
            input=stdin,
            env=env,
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
        """Run a bash script in a container, by default as `make shell` does: a login shell as
        the job user, in the checkout (/workspace; the accounting tier does not mount it)."""
        args = ["exec", "-T"]
        if user:
            args += ["-u", user]
        if service not in ACCOUNTING_TIER:
            script = f"cd /workspace && {script}"
        args += [service, "bash", "-lc", script]
        return self.dc(*args, timeout=timeout, check=check, stdin=stdin)

    def login(self, script: str, **kwargs: object) -> str:
        """stdout of a script run on the login node (slurmctld) as the job user."""
        return self.run(script, **kwargs).stdout  # type: ignore[arg-type]

    def node_names(self) -> list[str]:
        return sorted(set(self.login("sinfo -h -N -o %N").split()))  # once per partition

    def write(self, path: str, content: str) -> str:
        """Write a file on the shared filesystem as the job user."""
        self.run(f"mkdir -p $(dirname {path}) && cat > {path}", stdin=content)
        return path

    def sbatch(
        self, args: str, script: str | None = None, timeout: float = 600, env: str = ""
    ) -> tuple[int, int]:
        """Submit with --wait (a script body, or a job file in args); return (job id, exit code).

        env ("NAME=value ...") reaches the job through sbatch's default --export=ALL.
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
        """A fresh path on the shared filesystem, visible at the same place on every node."""
        return f"{SHARED}/tests/{stem}-{uuid.uuid4().hex[:8]}"

    @property
    def shared_host_dir(self) -> Path:
        """The host directory behind the cluster's shared filesystem (see .env)."""
        return self.checkout / env_file()["SLURMLAB_HOST_DIR"] / self.project / "shared"


DEMO_CONFIG = "jobs/configs/simple_cnn_synthetic.yaml"  # the CPU demo: quick on emulated GPUs


def training_log(job: int) -> str:
    """The log of a job started by submit_training."""
    return f"{SHARED}/tests/logs/{job}.out"


def submit_training(cluster: Cluster, sbatch_args: str = "", trainer_args: str = "") -> int:
    """jobs/train_ddp.sbatch on the demo config, logging to training_log(job); not waited for."""
    return cluster.submit(
        f"--output={SHARED}/tests/logs/%j.out {sbatch_args} jobs/train_ddp.sbatch {trainer_args}",
        env=f"CONFIG={DEMO_CONFIG}",
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    make("clean", timeout=300)
    started = time.monotonic()
    proc = make("up")
    if proc.returncode != 0:
        pytest.fail(f"make up failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    c = Cluster(PROJECT, up_seconds=time.monotonic() - started)
    c.run(f"mkdir -p {SHARED}/tests/logs")
    yield c
