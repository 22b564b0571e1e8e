"""What the CLI asks Slurm itself, on the controller: node and job lists, and the administrator's
commands that reshaping needs (drain, requeue, delete). Run with `docker exec`, as root, since
they are what a cluster's administrator does; jobs are never run this way."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from slurmlab import docker, facts
from slurmlab.errors import SlurmlabError


@dataclass(frozen=True)
class Node:
    """What a node registered with: its GRES (gpu:2), CPUs and memory (MiB)."""

    gres: str
    cpus: int
    memory_mb: int


@dataclass(frozen=True)
class Job:
    id: str
    requeueable: bool


# Enough for Slurm's client commands to reach the controller: what minimal_client() uses.
MINIMAL_CLIENT_CONF = (
    f"ClusterName={facts.SLURM_CLUSTER}\nSlurmctldHost={facts.LOGIN_SERVICE}\nAuthType=auth/munge\n"
)
MINIMAL_CLIENT_PATH = "/tmp/slurmlab-client.conf"


@dataclass
class Controller:
    container: docker.Container
    minimal: bool = False  # ask with MINIMAL_CLIENT_CONF, not the mounted slurm.conf

    def minimal_client(self) -> Controller:
        """This controller, asked with a client configuration that only says where it is: for
        containers started by another slurmlab, whose mounted slurm/ may no longer read with
        what they run (Slurm's clients then spend a minute failing)."""
        return Controller(self.container, minimal=True)

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> str:
        if self.minimal:
            command = (
                "sh", "-c",
                f'printf "{MINIMAL_CLIENT_CONF}" >{MINIMAL_CLIENT_PATH} && '
                f'SLURM_CONF={MINIMAL_CLIENT_PATH} exec "$@"',
                "slurmlab-client", *command,
            )  # fmt: skip
        proc = docker.run(
            docker.exec_args(self.container, command), capture_output=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            said = proc.stderr.strip() or proc.stdout.strip() or f"status {proc.returncode}"
            raise SlurmlabError(
                f"`{' '.join(command)}` failed on the controller: {said.splitlines()[-1]}. "
                "See the daemons' logs (slurmlab logs)",
                exit_code=1,
            )
        return proc.stdout

    def answers(self) -> bool:
        try:
            return "is UP" in self.run("scontrol", "ping", check=False, timeout=20)
        except TimeoutError:
            return False

    def wait_answering(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if time.monotonic() > deadline:
                raise SlurmlabError(
                    f"the controller does not answer after {timeout_s:.0f} s: see the daemons' "
                    "logs (slurmlab logs)",
                    exit_code=1,
                )
            time.sleep(0.5)

    def nodes(self) -> dict[str, Node]:
        """Every node Slurm knows, with what it registered. sinfo lists a node once per
        partition, hence the dict."""
        rows = [
            line.split() for line in self.run("sinfo", "-h", "-N", "-o", "%N %G %c %m").splitlines()
        ]
        return {row[0]: Node(row[1], int(row[2]), int(row[3])) for row in rows if len(row) == 4}

    def jobs(self, on: Sequence[str] = (), states: Iterable[str] = ()) -> list[Job]:
        args = ["squeue", "-h", "-O", "JobID:20,Requeue:4"]
        if on:
            args += ["-w", ",".join(on)]
        if states:
            args += ["-t", ",".join(states)]
        rows = [line.split() for line in self.run(*args).splitlines() if line.strip()]
        return [Job(row[0], row[1] != "0") for row in rows]

    def running_jobs(self, on: Sequence[str] = ()) -> list[Job]:
        return self.jobs(on, facts.RUNNING_JOB_STATES)

    def pending_node_counts(self) -> list[tuple[str, int]]:
        rows = self.run("squeue", "-h", "-t", "PENDING", "-o", "%i %D").split()
        return [(job, int(count)) for job, count in zip(rows[::2], rows[1::2], strict=True)]

    def drain(self, nodes: Sequence[str], reason: str) -> None:
        self.run("scontrol", "update", f"NodeName={','.join(nodes)}", "State=DRAIN",
                 f"Reason={reason}")  # fmt: skip

    def requeue(self, job: str) -> None:
        self.run("scontrol", "requeue", job)

    def delete_nodes(self, nodes: Sequence[str], tries: int = 30) -> None:
        """scontrol delete, retried: Slurm refuses while it still tracks a job end there."""
        for attempt in range(tries):
            said = self.run("scontrol", "delete", f"NodeName={','.join(nodes)}", check=False)
            if not self.nodes().keys() & set(nodes):
                return
            if attempt == tries - 1:
                raise SlurmlabError(
                    f"could not delete {','.join(nodes)} from Slurm ({said.strip()}): run "
                    f"scontrol delete NodeName={','.join(nodes)} on the controller",
                    exit_code=1,
                )
            time.sleep(1)

    def node_table(self) -> str:
        return self.run("sinfo", "-N", "-o", "%N %P %t %G %c %m")

    def sacctmgr(self, args: list[str]) -> tuple[int, str]:
        """sacctmgr as Slurm's administrator (root): its status and everything it said."""
        proc = docker.run(
            docker.exec_args(self.container, ["sacctmgr", *args]), capture_output=True, timeout=60
        )
        return proc.returncode, proc.stdout + proc.stderr

    def sacctmgr_show(self, args: list[str]) -> str:
        return self.run("sacctmgr", "-n", "-P", *args)

    def partitions(self) -> list[str]:
        return self.run("sinfo", "-h", "-o", "%R").split()

    def reconfigure(self) -> None:
        """slurm.conf read again (24.11 restarts slurmctld in place: jobs and queue are kept)."""
        self.run("scontrol", "reconfigure")
        self.wait_answering()

    def set_features(self, node: str, features: Sequence[str]) -> None:
        joined = ",".join(features)
        self.run("scontrol", "update", f"NodeName={node}", f"AvailableFeatures={joined}",
                 f"ActiveFeatures={joined}")  # fmt: skip

    def node_features(self) -> dict[str, tuple[str, ...]]:
        rows = [line.split() for line in self.run("sinfo", "-h", "-N", "-o", "%N %f").splitlines()]
        return {
            r[0]: tuple(f for f in r[1].split(",") if f != "(null)") for r in rows if len(r) == 2
        }
