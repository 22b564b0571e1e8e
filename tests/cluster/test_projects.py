"""Bring your own project: another repository's job files on slurmlab, through the `slurmlab` CLI.

The CLI is installed from this checkout into a virtualenv of its own, as a user installs it
(`pip install <checkout>`: the wheel, with its copy of the cluster definition), and every
command runs from a project's own folder, as a user types it there:

- tests/example_project, copied outside this checkout and owned by an ordinary user: its own
  job file, submitit launcher, slurmlab.yaml (2 nodes) and a PyPI dependency (tabulate);
- a second, smaller project beside it, to show that clusters side by side share nothing;
- folders with a bad slurmlab.yaml or requirements file, refused before anything starts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import CHECKOUT_UID, PROJECT, REPO, SHARED, copy_checkout

ROOT = Path(tempfile.gettempdir()) / f"{PROJECT}-projects"
EXAMPLE = REPO / "tests" / "example_project"
# The project owner: an ordinary user's uid (root's tests give the copies to CHECKOUT_UID).
OWNER = CHECKOUT_UID if os.geteuid() == 0 else os.geteuid()
DEPENDENCY = "tabulate==0.9.0"  # tests/example_project/requirements.txt
SECOND_DEPENDENCY = "tomli-w==1.2.0"  # added to it by a test; not in the cluster image


def install_cli(venv: Path, source: Path = REPO) -> Path:
    """A virtualenv with slurmlab installed from a checkout, as `pip install <checkout>` does."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv / "bin"


@pytest.fixture(scope="module")
def cli_bin() -> Path:
    return install_cli(ROOT / "venv")


def owned(path: Path) -> Path:
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(folder, name), OWNER, OWNER)
    os.chown(path, OWNER, OWNER)
    return path


@dataclass
class Project:
    """A project folder on the host and the CLI that drives its cluster."""

    dir: Path
    bin: Path

    def slurmlab(
        self, *args: str, cwd: Path | None = None, timeout: float = 600, stdin: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run(
            [str(self.bin / "slurmlab"), *args], cwd=cwd or self.dir, text=True,
            capture_output=True, timeout=timeout, input=stdin, env=env,
        )  # fmt: skip

    def exec(self, *command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.slurmlab("exec", "--", *command, timeout=timeout)

    def ok(self, *args: str, timeout: float = 600) -> str:
        proc = self.slurmlab(*args, timeout=timeout)
        assert proc.returncode == 0, f"slurmlab {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    @property
    def name(self) -> str:
        """The cluster's name, as `slurmlab env` gives it."""
        return re.search(r"^export COMPOSE_PROJECT_NAME=(\S+)$", self.ok("env"), re.M).group(1)

    def sacct(self, job: str) -> list[str]:
        return self.ok("exec", "--", "sacct", "-X", "-n", "-P", "-j", job, "-o",
                       "State,NNodes,NodeList,JobName").strip().split("|")  # fmt: skip


def running_images(cluster: str) -> list[str]:
    """The image ids of a cluster's containers."""
    ids = containers(f"com.docker.compose.project={cluster}")
    inspect = ["docker", "inspect", "-f", "{{.Image}}", *ids]
    return sorted(
        subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.split()
    )


def containers(label: str) -> list[str]:
    return subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label={label}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip


def project_up(folder: Path, bin_dir: Path) -> Iterator[Project]:
    """`slurmlab up` in a project folder; afterwards `slurmlab clean`, which leaves nothing."""
    project = Project(folder, bin_dir)
    proc = project.slurmlab("up", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    name = project.name
    try:
        yield project
    finally:
        project.ok("clean", timeout=300)
        assert containers(f"com.docker.compose.project={name}") == []
        volumes = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter",
             f"label=com.docker.compose.project={name}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert volumes == []
        assert not (folder / ".slurmlab").exists(), "clean removes the cluster's files"
        assert (folder / "slurmlab.yaml").exists(), "and nothing of the project"


def fresh_folder(folder: Path, bin_dir: Path) -> Path:
    """An empty project folder; a cluster a crashed earlier run left there is removed first."""
    if (folder / ".slurmlab").exists():
        subprocess.run([str(bin_dir / "slurmlab"), "clean"], cwd=folder, capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


LEFT_BEHIND: list[str] = []  # images built for one test run only, removed after it


@pytest.fixture(scope="module")
def example(cli_bin: Path) -> Iterator[Project]:
    """tests/example_project, outside this checkout, owned by an ordinary user, brought up."""
    folder = fresh_folder(ROOT / "example_project", cli_bin)
    shutil.copytree(
        EXAMPLE,
        folder,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".slurmlab", "results", "submitit", "slurm-*"),
    )
    yield from project_up(owned(folder), cli_bin)
    for image in LEFT_BEHIND:
        subprocess.run(["docker", "rmi", image], capture_output=True, check=True)


@pytest.fixture(scope="module")
def other(cli_bin: Path) -> Iterator[Project]:
    """A second project up beside the example: one node, no dependencies."""
    folder = fresh_folder(ROOT / "other_project", cli_bin)
    (folder / "slurmlab.yaml").write_text("nodes: 1\nrequirements: false\n")
    (folder / "notes.txt").write_text("the other project's own file\n")
    yield from project_up(owned(folder), cli_bin)


# ---- the example project, on its own cluster -----------------------------------------------


def test_the_ci_example_runs_as_written_with_slurmlab_installed_from_this_checkout(
    example: Project,
) -> None:
    """The example's GitHub Actions workflow, step by step, in its folder. Its install step
    (pipx from GitHub) is the one step not run: the CLI from this checkout is on PATH instead.
    Runs first, on the fresh cluster: its last step asserts that every job there COMPLETED."""
    workflow = yaml.safe_load((example.dir / ".github/workflows/slurm.yml").read_text())
    steps = workflow["jobs"]["slurm"]["steps"]
    install = [s for s in steps if s.get("id") == "install-slurmlab"]
    assert len(install) == 1 and "slurmlab" in install[0]["run"]
    env = {**os.environ, "PATH": f"{example.bin}:{os.environ['PATH']}"}
    ran = []
    for step in steps:
        if "run" not in step or step is install[0] or "if" in step:
            continue
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=example.dir, env=env, text=True, capture_output=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, f"step {step['name']!r}:\n{proc.stdout}\n{proc.stderr}"
        ran.append(proc.stdout)
    assert len(ran) == 4
    assert re.search(r"^job \d+: 2 tasks returned$", "\n".join(ran), re.M)


def test_sbatch_job_runs_on_two_nodes_with_the_projects_dependency_and_writes_into_it(
    example: Project,
) -> None:
    proc = example.exec("sbatch", "--parsable", "--wait", "jobs/hello.sbatch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = proc.stdout.strip().split(";")[0]
    assert example.sacct(job) == ["COMPLETED", "2", "node[1-2]", "hello"]
    reports = sorted((example.dir / "results" / job).glob("rank*.txt"))
    assert [r.name for r in reports] == ["rank0.txt", "rank1.txt"]
    hosts = set()
    for report in reports:
        text = report.read_text()
        assert "/opt/venv/bin/python" in text and DEPENDENCY.split("==")[1] in text, text
        hosts |= set(re.findall(r"\bnode\d\b", text))
        assert report.stat().st_uid == OWNER, "what jobs write belongs to the project's owner"
    assert hosts == {"node1", "node2"}, "the dependency imported on every node"
    log = example.dir / f"slurm-{job}.out"
    assert log.read_text().startswith(f"job {job} on node[1-2]")
    assert (log.stat().st_uid, log.stat().st_gid) == (OWNER, OWNER)


def test_submitit_launcher_runs_on_two_nodes_from_the_projects_folder(example: Project) -> None:
    proc = example.exec("python", "launch.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0 on node1: tabulate 0.9.0" in proc.stdout
    assert "rank 1 on node2: tabulate 0.9.0" in proc.stdout
    job = re.search(r"^job (\d+): 2 tasks returned$", proc.stdout, re.M)
    assert job, proc.stdout
    assert example.sacct(job.group(1))[:2] == ["COMPLETED", "2"]
    folder = example.dir / "submitit" / job.group(1)
    assert folder.is_dir() and folder.stat().st_uid == OWNER
    assert sorted(p.name for p in (example.dir / "results" / "submitit").iterdir()) == [
        "rank0.txt",
        "rank1.txt",
    ]


def test_shell_is_a_login_shell_in_the_project_as_the_projects_owner(example: Project) -> None:
    typed = (
        "pwd\nid -u\ncommand -v python\npython -c 'import tabulate; print(tabulate.__version__)'"
    )
    proc = example.slurmlab("shell", stdin=typed + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(example.dir), str(OWNER), "/opt/venv/bin/python", "0.9.0"]


def test_exec_runs_in_the_folder_you_stand_in_and_returns_the_commands_status(
    example: Project,
) -> None:
    jobs = example.dir / "jobs"
    proc = example.slurmlab(
        "exec", "--", "sh", "-c", "pwd; echo $SLURMLAB_SHARED; exit 7", cwd=jobs
    )
    assert proc.returncode == 7
    assert proc.stdout.split() == [str(jobs), SHARED]


def test_status_and_logs_show_the_projects_cluster(example: Project) -> None:
    status = example.ok("status")
    assert f"cluster {example.name}: 2 node(s) x 1 GPU(s) (emulated)" in status
    assert f"project:       {example.dir} (on the cluster at the same path)" in status
    assert re.search(r"^node1 +gpu\* +idle +gpu:1 ", status, re.M), status
    assert re.search(r"^JOBID +NAME +USER +STATE", status, re.M), status
    assert re.search(r"^\d+ +hello +slurmlab +COMPLETED", status, re.M), status
    assert "error" not in status.lower() and "invalid" not in status.lower(), status
    job = example.ok(
        "exec", "--", "sbatch", "--parsable", "--wait", "--wrap", "echo logged-$SLURM_JOB_ID"
    )
    job = job.strip()
    assert f"logged-{job}" in example.ok("logs", "--no-follow", job)
    assert "slurmctld" in example.ok("logs", "--no-follow")


def test_dependencies_are_installed_once_and_again_only_when_their_file_changes(
    example: Project,
) -> None:
    again = example.slurmlab("up")
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stdout, again.stdout
    assert "building" not in again.stdout and "Recreating" not in again.stderr
    name = example.name
    images = running_images(name)

    # A changed requirements file is a new image: every container starts again, so a running
    # job stops `slurmlab up` before anything changes.
    job = example.ok("exec", "--", "sbatch", "--parsable", "-N1", "--wrap", "sleep 300").strip()
    deadline = time.monotonic() + 60
    while example.ok("exec", "--", "squeue", "-h", "-j", job, "-o", "%T").strip() != "RUNNING":
        assert time.monotonic() < deadline, f"job {job} did not start"
        time.sleep(1)
    requirements = example.dir / "requirements.txt"
    # Unique to this run, so that no image an earlier run left on this host is reused.
    run_id = f"# added by the test run {uuid.uuid4().hex}"
    requirements.write_text(f"{requirements.read_text()}{SECOND_DEPENDENCY}  {run_id}\n")
    refused = example.slurmlab("up", timeout=900)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "== building slurmlab-deps:" in refused.stdout, "a changed file is installed again"
    assert f"job(s) {job} run there now: wait for them" in refused.stderr, refused.stderr
    assert running_images(name) == images, "nothing was changed"
    example.ok("exec", "--", "scancel", job)

    rebuilt = example.slurmlab("up", timeout=900)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "building" not in rebuilt.stdout, "built once, by the refused run"
    assert "image changed" in rebuilt.stdout
    assert running_images(name) != images
    module = SECOND_DEPENDENCY.split("==")[0].replace("-", "_")
    seen = example.ok("exec", "--", "srun", "-N2", "python", "-c",
                      f"import socket, {module}; print(socket.gethostname())")  # fmt: skip
    assert sorted(seen.split()) == ["node1", "node2"], "the new dependency on every node"
    names = example.ok("exec", "--", "sacct", "-X", "-n", "-P", "-o", "JobName").split()
    assert "hello" in names, "accounting is kept across the restart"
    LEFT_BEHIND.append(re.search(r"building (slurmlab-deps:\w+)", refused.stdout).group(1))


# ---- two projects side by side -------------------------------------------------------------


def test_two_projects_clusters_do_not_see_each_others_jobs_or_files(
    example: Project, other: Project
) -> None:
    assert example.name != other.name
    listed = example.ok("list")
    for project in (example, other):
        assert re.search(rf"^{project.name} .* running +{project.dir}$", listed, re.M), listed
    for project, mine in ((example, "only-in-example"), (other, "only-in-other")):
        done = project.exec("sbatch", "--parsable", "--wait", "-J", mine, "--wrap", "true")
        assert done.returncode == 0, done.stderr
        project.exec("sh", "-c", f"echo {mine} > $SLURMLAB_SHARED/{mine}.txt")
    for project, mine, theirs in (
        (example, "only-in-example", "only-in-other"),
        (other, "only-in-other", "only-in-example"),
    ):
        names = project.ok("exec", "--", "sacct", "-X", "-n", "-P", "-o", "JobName").split()
        assert mine in names and theirs not in names, names
        assert project.exec("test", "-e", f"{SHARED}/{theirs}.txt").returncode == 1
        assert project.exec("test", "-e", f"{SHARED}/{mine}.txt").returncode == 0
    assert other.exec("test", "-e", str(example.dir)).returncode == 1, "another project's folder"
    rest = {project.name: rest_address(project) for project in (example, other)}
    assert len(set(rest.values())) == 2, f"each cluster's REST API has its own port: {rest}"
    assert other.exec("cat", "notes.txt").stdout == "the other project's own file\n"
    failed = other.exec("sbatch", "--wait", "--wrap", "exit 3")
    assert failed.returncode == 3, "exec returns the command's status: sbatch --wait the job's"


def rest_address(project: Project) -> str:
    """The REST API's address as `slurmlab status` prints it (and the token lines give it)."""
    found = re.search(r"REST API: +(http://127\.0\.0\.1:\d+)", project.ok("status"))
    assert found, "slurmlab status names the REST API's address"
    return found.group(1)


def test_a_fresh_clusters_secrets_are_created_and_never_logged(other: Project) -> None:
    """Through `docker exec`: reading the secrets needs root on their containers."""
    ids = containers(f"com.docker.compose.project={other.name}")
    logs = "".join(
        subprocess.run(["docker", "logs", cid], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True).stdout
        for cid in ids
    )  # fmt: skip
    assert "creating this cluster's database password" in logs
    assert "creating this cluster's munge key" in logs
    assert "creating this cluster's JWT key (REST API tokens)" in logs
    secrets = [
        subprocess.run(["docker", "exec", cid, "sh", "-c", command], capture_output=True,
                       text=True).stdout.strip()
        for cid in ids
        for command in ("cat /run/slurmlab/db/password 2>/dev/null",
                        "base64 -w0 /etc/munge/munge.key 2>/dev/null | head -c 64",
                        "base64 -w0 /etc/slurmlab/jwt/jwt_hs256.key 2>/dev/null")
    ]  # fmt: skip
    found = {secret for secret in secrets if secret}
    assert len(found) == 3, "one DB password, munge key and JWT key, shared by the containers"
    for secret in found:
        assert secret not in logs


def test_a_cluster_name_another_project_uses_is_refused(example: Project, other: Project) -> None:
    before = containers(f"com.docker.compose.project={example.name}")
    proc = other.slurmlab("up", "--name", example.name)
    assert proc.returncode == 2
    assert (
        f"the cluster name {example.name} is taken by the cluster of {example.dir}" in proc.stderr
    )
    assert containers(f"com.docker.compose.project={example.name}") == before


# ---- bad config: refused before anything starts --------------------------------------------


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({"slurmlab.yaml": "nodse: 2\n"}, [], "unknown key 'nodse' (did you mean 'nodes'?)"),
        ({"slurmlab.yaml": "nodes: 0\n"}, [],
         "nodes: 0 in {dir}/slurmlab.yaml: a cluster has 1 to 16 nodes"),
        ({}, ["--nodes", "0"], "--nodes 0: a cluster has 1 to 16 nodes"),
        ({"slurmlab.yaml": "gpu_mode: nvidia\nnodes: 2\ngpus_per_node: 2\n"}, [],
         "needs 4 GPUs, this host has 2 (nvidia-smi -L), and each node needs GPUs of its own: "
         "choose a smaller shape, e.g. --nodes 1 --gpus-per-node 2"),
        ({"requirements.txt": "tabulate==0.0.404\n"}, [],
         "the project's Python dependencies do not install"),
        ({"slurmlab.yaml": "requirements: deps/train.txt\n"}, [], "no such file in the project"),
        ({"requirements.txt": "-e .\n"}, [], "installs from the project folder"),
    ],
    ids=["unknown-key", "zero-nodes", "zero-nodes-flag", "more-gpus-than-the-host",
         "requirements-that-do-not-install", "requirements-file-missing",
         "requirements-installing-the-project"],
)  # fmt: skip
def test_bad_config_fails_before_anything_starts_with_the_fix_named(
    cli_bin: Path, tmp_path: Path, files: dict[str, str], args: list[str], message: str
) -> None:
    """More GPUs than the host has is checked with a stand-in nvidia-smi listing 2 GPUs."""
    folder = tmp_path / "project"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 (UUID: 0)"\necho "GPU 1: NVIDIA H100"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    proc = Project(folder, cli_bin).slurmlab("up", *args, env=env, timeout=900)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message.format(dir=folder) in proc.stderr, proc.stderr
    assert containers(f"io.slurmlab.project-dir={folder}") == [], "nothing may start"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files), "nor be written there"


# ---- the README ----------------------------------------------------------------------------

README_BLOCK = re.compile(r"^<!-- your-project -->\n```[^\n]*\n(.*?)^```", re.M | re.S)


def test_readme_use_it_in_your_project_runs_as_written(tmp_path: Path) -> None:
    """The README's block, in one shell, from a fresh copy of this checkout (it installs the CLI
    with `pip install .` into the virtualenv first on PATH, then works in tests/example_project)."""
    blocks = README_BLOCK.findall((REPO / "README.md").read_text())
    assert len(blocks) == 1, "README.md marks one block with <!-- your-project -->"
    checkout = copy_checkout(tmp_path / "slurmlab", OWNER)
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    try:
        proc = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", blocks[0]], cwd=checkout, env=env, text=True,
            capture_output=True, timeout=1800,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        assert re.search(r"^Submitted batch job \d+$", proc.stdout, re.M), proc.stdout
        assert re.search(r"^job \d+: 2 tasks returned$", proc.stdout, re.M), proc.stdout
        assert not (checkout / "tests/example_project/.slurmlab").exists(), "the block cleans up"
    finally:
        subprocess.run(["slurmlab", "clean"], cwd=checkout / "tests/example_project", env=env,
                       capture_output=True)  # fmt: skip
