"""The README's `make shell` commands, read from README.md and run as written.

Each fenced block that README.md marks with ``<!-- make-shell -->`` runs in one login shell as
the job user in the checkout (what `make shell` gives), so variables set by one line reach the
next, as they do for a user. Every command must match exactly one expectation below, which
asserts its outcome: a README command without one fails the test, so README and tests cannot
drift apart. Each block stands alone, as it does for a reader who starts there.

A training job a block starts (jobs/train_*.sbatch) must also train as the trainer promises: one
rank per node over gloo, learning well beyond chance, rank 0 alone logging, checkpoint, curves
and metrics in its run directory (check_training).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from conftest import CHECKOUT, REPO, Cluster

CHANCE = 10.0  # % accuracy of guessing among 10 classes

MARKER = re.compile(r"^<!-- make-shell(?::\s*(\w+))? -->\n```[^\n]*\n(.*?)^```", re.M | re.S)


@dataclass
class Session:
    """What the commands of one block did: each command's output and exit status, in order."""

    cluster: Cluster
    jobs: list[int] = field(default_factory=list)
    training: list[tuple[int, str]] = field(default_factory=list)  # (job, launcher) to check


@dataclass
class Ran:
    command: str
    output: str
    status: int
    job_var: str  # the shell variable $job after the command (README blocks keep ids there)


def readme_blocks() -> list[tuple[str, list[str]]]:
    """(tag, commands) of every make-shell block; tag is "" or what follows the colon."""
    text = (REPO / "README.md").read_text()
    return [
        (m.group(1) or "", [line for line in m.group(2).splitlines() if line.strip()])
        for m in MARKER.finditer(text)
    ]


def run_block(cluster: Cluster, commands: list[str]) -> list[Ran]:
    """Run the commands as one script in one login shell, framing each one's output."""
    # stderr too, as the user's terminal shows it: a refusal is a command's output
    script = "exec 2>&1\n" + "\n".join(
        f"printf '\\n@@begin {i}\\n'\n{command}\nprintf '\\n@@end {i} %d %s\\n' $? \"${{job:-}}\""
        for i, command in enumerate(commands)
    )
    proc = cluster.run(script, check=False, timeout=1500)
    ran = []
    for i, command in enumerate(commands):
        match = re.search(rf"\n@@begin {i}\n(.*?)\n@@end {i} (\d+) (\S*)\n", proc.stdout, re.S)
        assert match, f"{command!r} did not finish:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        ran.append(Ran(command, match.group(1), int(match.group(2)), match.group(3)))
    return ran


def job_completed(session: Session, job: int) -> None:
    session.jobs.append(job)
    assert session.cluster.wait_done(job, timeout=900)[0] == "COMPLETED"


def note_training(session: Session, ran: Ran, job: int) -> None:
    launcher = re.search(r"jobs/train_(ddp|torchrun)\.sbatch", ran.command)
    if launcher:
        session.training.append((job, {"ddp": "slurm", "torchrun": "torchrun"}[launcher[1]]))


def check_training(cluster: Cluster, job: int, launcher: str) -> None:
    """A completed training job's log (slurm-<id>.out in the checkout) and run directory."""
    nodes = int(cluster.sacct(job, "State,NNodes")[1])
    log = (CHECKOUT / f"slurm-{job}.out").read_text()
    topology = rf"Topology: launcher={launcher} rank=0 world_size={nodes} "
    assert re.search(topology, log), f"one rank per node expected:\n{log[:3000]}"
    assert "backend=gloo" in log  # emulated GPUs: CUDA sees none, so CPU ranks talk gloo
    final = re.search(r"^Final: epoch=\d+ val_acc=([0-9.]+)", log, re.M)
    assert final and float(final.group(1)) > 2 * CHANCE, log[-3000:]
    assert log.count("Epoch 0 - Train Acc") == 1, "only rank 0 prints the training log"
    run = cluster.shared_host_dir / "runs" / str(job)
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert '"val_acc"' in (run / "metrics.jsonl").read_text()
    assert list((run / "checkpoints").glob("*.pt")), f"no checkpoint in {run}"


def expect_submitted(session: Session, ran: Ran) -> None:
    match = re.search(r"Submitted batch job (\d+)", ran.output)
    assert ran.status == 0 and match, ran.output
    session.jobs.append(int(match.group(1)))
    note_training(session, ran, int(match.group(1)))


def expect_waited(session: Session, ran: Ran) -> None:
    """sbatch --wait: the job has ended by the time sbatch returns, and it COMPLETED."""
    match = re.search(r"(?:Submitted batch job )?(\d+)", ran.output + " " + ran.job_var)
    assert ran.status == 0 and match, ran.output
    job_completed(session, int(match.group(1)))
    note_training(session, ran, int(match.group(1)))


def expect_in_queue_listing(session: Session, ran: Ran) -> None:
    assert ran.status == 0 and "JOBID" in ran.output and "PARTITION" in ran.output, ran.output
    assert str(session.jobs[-1]) in ran.output, "the job just submitted is listed"


def expect_accounting(session: Session, ran: Ran) -> None:
    assert ran.status == 0 and "JobID" in ran.output, ran.output
    assert re.search(rf"^{session.jobs[-1]}\s", ran.output, re.M), ran.output


def expect_step_usage(session: Session, ran: Ran) -> None:
    """sacct with MaxRSS/AveCPU: the job COMPLETED and its steps report real memory use."""
    assert ran.status == 0 and "COMPLETED" in ran.output, ran.output
    steps = [line for line in ran.output.splitlines() if re.match(rf"{session.jobs[-1]}\.", line)]
    assert steps, ran.output
    assert any(re.search(r"\b\d+(\.\d+)?[KMG]\b", line) for line in steps), (
        f"no step reports its MaxRSS:\n{ran.output}"
    )


def expect_efficiency(session: Session, ran: Ran) -> None:
    assert ran.status == 0 and "State: COMPLETED" in ran.output, ran.output
    used = re.search(r"Memory Utilized: ([0-9.]+) (MB|GB)", ran.output)
    assert used and float(used.group(1)) > 0, ran.output
    assert re.search(r"CPU Efficiency: [0-9.]+%", ran.output), ran.output


def expect_final_log_line(session: Session, ran: Ran) -> None:
    """The job's log is Slurm's default, slurm-<id>.out in the submit directory (the checkout),
    and on the host it belongs to the checkout's owner, like everything the job user writes."""
    assert ran.status == 0 and re.search(r"^Final: epoch=\d+ ", ran.output, re.M), ran.output
    log = CHECKOUT / f"slurm-{session.jobs[-1]}.out"
    assert (log.stat().st_uid, log.stat().st_gid) == (
        CHECKOUT.stat().st_uid,
        CHECKOUT.stat().st_gid,
    )
    assert re.search(r"^Final: epoch=\d+ ", log.read_text(), re.M)


def expect_run_files(session: Session, ran: Ran) -> None:
    assert ran.status == 0, ran.output
    assert {"checkpoints", "curves.png", "metrics.jsonl"} <= set(ran.output.split())


def expect_submitit_ranks(session: Session, ran: Ran) -> None:
    match = re.search(r"job (\d+): 2 ranks returned, COMPLETED", ran.output)
    assert ran.status == 0 and match, ran.output
    session.jobs.append(int(match.group(1)))


def expect_sweep_table(session: Session, ran: Ran) -> None:
    assert ran.status == 0, ran.output
    array = re.search(r"submitted job array (\d+) \(2 tasks\)", ran.output)
    assert array, ran.output
    rows = re.findall(rf"^{array.group(1)}_\d+\s+lr=(\S+) .*COMPLETED\s", ran.output, re.M)
    assert sorted(rows) == ["0.05", "0.2"], ran.output
    states = session.cluster.login(f"sacct -n -X -P -j {array.group(1)} -o State").split()
    assert states == ["COMPLETED"] * 2, states


def expect_fair_share_table(session: Session, ran: Ran) -> None:
    """sshare -a: both accounts of the default site and both its users, with their factors."""
    assert ran.status == 0 and "FairShare" in ran.output, ran.output
    for account, user in (("ml", "slurmlab"), ("research", "slurmlab"), ("research", "alice")):
        assert re.search(rf"^\s+{account}\s+{user}\s+1\s", ran.output, re.M), ran.output


def expect_associations(session: Session, ran: Ran) -> None:
    assert ran.status == 0, ran.output
    rows = {tuple(line.split()) for line in ran.output.splitlines()}
    assert {("ml", "slurmlab", "debug,normal", "normal"),
            ("research", "slurmlab", "debug,normal", "normal")} <= rows, ran.output  # fmt: skip


def expect_refused(said: str) -> Expectation:
    """sbatch refused at submit with Slurm's message, and nothing queued."""

    def check(session: Session, ran: Ran) -> None:
        assert ran.status != 0 and said in ran.output, ran.output
        assert "Submitted batch job" not in ran.output

    return check


Expectation = Callable[[Session, Ran], None]
EXPECTATIONS: list[tuple[str, Expectation]] = [
    (r"^sbatch (?!.*--wait)\S*.*jobs/train_ddp\.sbatch", expect_submitted),
    (r"^(\w+=\S+ )?sbatch .*--wait", expect_waited),
    (r"^job=\$\(sbatch --parsable --wait ", expect_waited),
    (r"^squeue$", expect_in_queue_listing),
    (r"^sacct$", expect_accounting),
    (r"^sacct -j \"\$job\" .*MaxRSS", expect_step_usage),
    (r"^seff \"\$job\"$", expect_efficiency),
    (r"^tail .*slurm-\$job\.out", expect_final_log_line),
    (r"^ls \"\$SLURMLAB_SHARED/runs/\$job\"$", expect_run_files),
    (r"^python jobs/submit\.py --nodes 2 ", expect_submitit_ranks),
    (r"^python jobs/submit\.py .*--sweep ", expect_sweep_table),
    (r"^sshare -a$", expect_fair_share_table),
    (r"^sacctmgr show assoc user=\$USER ", expect_associations),
    (r"^sbatch --account=no_such_account ",
     expect_refused("Invalid account or account/partition combination specified")),
    (r"^sbatch --qos=debug --time=01:00:00 ", expect_refused("QOSMaxWallDurationPerJobLimit")),
    (r"^sbatch --mem=64G ", expect_refused("Memory specification can not be satisfied")),
]  # fmt: skip


def expectation_for(command: str) -> Expectation:
    found = [check for pattern, check in EXPECTATIONS if re.search(pattern, command)]
    assert len(found) == 1, (
        f"README command {command!r} matches {len(found)} expectations in {__file__}: "
        "give it exactly one"
    )
    return found[0]


def test_readme_has_make_shell_blocks() -> None:
    tags = [tag for tag, _ in readme_blocks()]
    assert tags.count("") >= 3 and set(tags) <= {"", "gpu"}, tags


@pytest.mark.parametrize(
    "index", range(len(readme_blocks())), ids=lambda i: f"block{i + 1}-{readme_blocks()[i][0]}"
)
def test_readme_make_shell_block_works_as_written(cluster: Cluster, index: int) -> None:
    tag, commands = readme_blocks()[index]
    if tag == "gpu" and "emulated" in cluster.login("echo $SLURMLAB_GPU_MODE"):
        pytest.skip("ResNet50 on CIFAR-10 needs real GPUs and the dataset; emulated GPUs here")
    checks = [expectation_for(command) for command in commands]
    session = Session(cluster)
    for ran, check in zip(run_block(cluster, commands), checks, strict=True):
        check(session, ran)
    for job in session.jobs:  # submitted without --wait: they must complete too
        assert cluster.wait_done(job, timeout=900)[0] == "COMPLETED", job
    for job, launcher in session.training:
        check_training(cluster, job, launcher)
