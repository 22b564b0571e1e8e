"""A real slurmlab cluster for end-to-end tests, shared by every test file and kept between runs.

The cluster runs under its own name (``slurmlab-test``, SLURMLAB_TEST_PROJECT) so the tests never
touch a user's cluster. The session fixture brings it to the default shape with ``make up``, which
reuses a test cluster left running by an earlier run (nothing to do when it is up: about a
second) and starts one otherwise; a test that changes the cluster (its shape, a stopped node, a
restart) puts it back before it ends. So any file, any test (``-k``) runs alone, in any order.
``make test-clean`` removes the test cluster.

Tests drive it the way a user does: ``make`` targets on the host, and commands typed in
``make shell`` (a login shell as the job user, in the checkout), through the CLI's own
``exec``. Commands on other containers go through ``docker exec`` and say so.
"""

from __future__ import annotations

import filecmp
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from slurmlab import docker, facts  # noqa: E402  (the checkout's own package, from REPO)

PROJECT = os.environ.get("SLURMLAB_TEST_PROJECT", "slurmlab-test")
JOB_USER = facts.JOB_USER
MOUNT = facts.CHECKOUT_MOUNT  # where the checkout is on every container
SHARED = facts.shared_root()  # the cluster's shared filesystem, as jobs see it
# An ordinary user's uid that the image does not know: the checkout's owner in a user's clone.
CHECKOUT_UID = 1234
# The default shape, under slurmlab's default site (a test that gave the cluster another site
# puts it back; an interrupted one is put back here).
DEFAULT_SHAPE = ("NODES=4", "GPUS_PER_NODE=1", "GPUS=0", "SITE=default")
NODES = [facts.node_name(k) for k in range(1, 5)]


def tracked_files(repo: Path = REPO) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (repo / name).is_file()]


def copy_checkout(dest: Path, uid: int) -> Path:
    """The working tree (tracked and untracked, not ignored files) at dest, owned by uid.

    Updated in place: a running cluster mounts dest, and a mount of a folder that was removed
    and made again would still show the removed one."""
    dest.mkdir(parents=True, exist_ok=True)
    names = tracked_files()
    for name in names:
        source, target = REPO / name, dest / name
        if not target.is_file() or not filecmp.cmp(source, target, shallow=False):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    keep = {Path(name).parts[0] for name in names} | {".slurmlab"}
    for entry in dest.iterdir():
        if entry.name not in keep and not entry.name.startswith("slurm-"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for root, dirs, files in os.walk(dest):
        dirs[:] = [d for d in dirs if d != ".slurmlab"]  # the cluster's own files keep theirs
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, uid)
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


def slurmlab(
    *args: str,
    checkout: Path = CHECKOUT,
    project: str = PROJECT,
    timeout: float = 600,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """The CLI from the checkout, on the test cluster (what make's targets run)."""
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "slurmlab", command, "--project", str(checkout), "--name",
         project, *rest],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},
        text=True,
        capture_output=True,
        timeout=timeout,
        input=stdin,
    )  # fmt: skip


@dataclass
class Cluster:
    project: str
    checkout: Path = CHECKOUT
    up_seconds: float = 0.0
    _env: dict[str, str] = field(default_factory=dict)

    @property
    def compose_env(self) -> dict[str, str]:
        """What `slurmlab env` (make env) gives a plain docker compose."""
        if not self._env:
            proc = slurmlab("env", checkout=self.checkout, project=self.project)
            assert proc.returncode == 0, proc.stderr
            for line in proc.stdout.splitlines():
                key, _, value = line.removeprefix("export ").partition("=")
                self._env[key] = shlex.split(value)[0] if value else ""
        return {**os.environ, **self._env}

    def dc(
        self, *args: str, timeout: float = 300, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """docker compose on the cluster, after `eval "$(make env)"`, as a user would."""
        cmd = [*docker.compose_command(), *args]
        proc = subprocess.run(
            cmd,
            cwd=self.checkout,
            text=True,
            capture_output=True,
            timeout=timeout,
            input=stdin,
            env=self.compose_env,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def container_id(self, service: str) -> str:
        found = [c for c in docker.containers(self.project) if c.service == service]
        assert found, f"no {service} container in cluster {self.project}"
        return found[0].id

    def run(
        self,
        script: str,
        service: str = facts.LOGIN_SERVICE,
        user: str | None = JOB_USER,
        check: bool = True,
        timeout: float = 300,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash script as `make shell` does: a login shell as the job user (or another
        user of the site: `make shell AS=alice`), in the checkout, on the login node
        (`slurmlab exec`). On another container, or as root, it runs there through
        `docker exec` in a login shell, in the checkout where that container mounts it."""
        if service == facts.LOGIN_SERVICE and user not in (None, "root"):
            as_user = [] if user == JOB_USER else ["--user", user]
            proc = slurmlab(
                "exec", *as_user, "--", "bash", "-c", script,
                checkout=self.checkout, project=self.project, timeout=timeout, stdin=stdin,
            )  # fmt: skip
        else:
            workdir = [] if service in facts.ACCOUNTING_TIER else ["-w", MOUNT]
            cmd = ["docker", "exec", "-i", *(["-u", user] if user else []), *workdir,
                   self.container_id(service), "bash", "-lc", script]  # fmt: skip
            proc = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, input=stdin)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{script!r} on {service} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

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
            if out and out.split("|")[0] not in facts.ACTIVE_JOB_STATES:
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

    def wait_idle(self, timeout: float = 300) -> None:
        """Until the default four nodes are idle (a test that stopped or drained one is done)."""

        def idle() -> bool:
            rows = set(self.login("sinfo -h -N -o '%N %t'").splitlines())
            return rows == {f"{node} idle" for node in NODES}

        self.wait_for("the four nodes to be idle", idle, timeout)

    def tmp_path(self, stem: str) -> str:
        """A fresh path on the shared filesystem, visible at the same place on every node."""
        return f"{SHARED}/tests/{stem}-{uuid.uuid4().hex[:8]}"

    @property
    def shared_host_dir(self) -> Path:
        """The host directory behind the cluster's shared filesystem (see .env)."""
        return self.checkout / facts.setting("SLURMLAB_HOST_DIR") / self.project / "shared"


DEMO_CONFIG = "jobs/configs/simple_cnn_synthetic.yaml"  # the CPU demo: quick on emulated GPUs


def training_log(job: int) -> str:
    """The log of a job started by submit_training."""
    return f"{SHARED}/tests/logs/{job}.out"


# Half the demo's synthetic set, in a folder of its own (a set is generated once per folder),
# for the runs where the faults, not the training, are tested; later overrides win.
SMALL_DATA = f"data_dir={SHARED}/tests/data synthetic_train=4000 synthetic_val=1000"


def submit_training(cluster: Cluster, sbatch_args: str = "", trainer_args: str = "") -> int:
    """jobs/train_ddp.sbatch on the demo config (SMALL_DATA), logging to training_log(job); not
    waited for."""
    return cluster.submit(
        f"--output={SHARED}/tests/logs/%j.out {sbatch_args} jobs/train_ddp.sbatch {SMALL_DATA} "
        f"{trainer_args}",
        env=f"CONFIG={DEMO_CONFIG}",
    )


def cancel_leftover_jobs(project: str) -> None:
    """Jobs an interrupted earlier run left on a reused cluster would hold its nodes."""
    login = [c for c in docker.containers(project) if c.service == facts.LOGIN_SERVICE]
    if not login or not login[0].running:
        return
    cid = login[0].id
    subprocess.run(["docker", "exec", cid, "scancel", "-u", JOB_USER], capture_output=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        queue = subprocess.run(
            ["docker", "exec", cid, "squeue", "-h", "-o", "%i"], capture_output=True, text=True
        )
        if queue.returncode != 0 or not queue.stdout.strip():
            return
        time.sleep(1)


def set_aside_logs_of_an_earlier_cluster(c: Cluster) -> None:
    """A cluster made again (make test-clean) numbers its jobs from 1 again, and the job files'
    --open-mode=append would add a new job's log to an earlier cluster's slurm-<id>.out in the
    checkout, which the tests then read. Those files (ids this cluster has not given yet) are
    moved, not removed, to .slurmlab/<project>/earlier-logs/."""
    given = c.login("sacct -a -X -n -P -o JobID -S 2000-01-01 | cut -d_ -f1", timeout=120)
    last = max((int(i) for i in given.split() if i.isdigit()), default=0)
    aside = CHECKOUT / ".slurmlab" / PROJECT / "earlier-logs"
    for log in CHECKOUT.glob("slurm-*.out"):
        job = log.name.removeprefix("slurm-").removesuffix(".out")
        if job.isdigit() and int(job) > last:
            aside.mkdir(parents=True, exist_ok=True)
            log.rename(aside / f"{log.name}.{int(log.stat().st_mtime)}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    cancel_leftover_jobs(PROJECT)
    started = time.monotonic()
    proc = make("up", *DEFAULT_SHAPE)
    if proc.returncode != 0:
        pytest.fail(f"make up failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    c = Cluster(PROJECT, up_seconds=time.monotonic() - started)
    c.run(f"mkdir -p {SHARED}/tests/logs")
    set_aside_logs_of_an_earlier_cluster(c)
    yield c
