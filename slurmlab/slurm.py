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
class Job:
    id: str
    requeueable: bool


@dataclass
class Controller:
    container: docker.Container

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> str:
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

    def nodes(self) -> dict[str, str]:
        """Every node Slurm knows: name -> GRES (e.g. gpu:1). sinfo lists a node once per
        partition, hence the dict."""
        rows = self.run("sinfo", "-h", "-N", "-o", "%N %G").split()
        return dict(zip(rows[::2], rows[1::2], strict=True))

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
