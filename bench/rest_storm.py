"""A submission storm: jobs arriving at once over the REST API and through sbatch, from several
concurrent clients, optionally with the controller restarted or slurmdbd stopped in the middle.

Bounded in count and time and stopping by itself; it reaches only this machine (the REST API on
127.0.0.1, sbatch through `slurmlab exec` on the login node). Every job must reach a final state
and have its record in accounting; a client that got an error retries it (Slurm's errors during a
restart say to), and a job is lost if a client was told it was submitted and Slurm never ran it.
make bench-cluster prints its figures; tests/cluster/test_rest.py runs it smaller, with faults.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from jobs.rest_submit import FINAL_STATES, Client, RestError

RETRIES = 40  # per job, one second apart: rides out a controller restart
# slurmctld's resident memory (KiB), run by a shell on its container. Found by its command line
# (`slurmctld -D`): Debian's process is named slurmctld-wlm, so `ps -C slurmctld` misses it.
CONTROLLER_RSS_KIB = "ps -eo rss=,args= | awk '$2 ~ /(^|\\/)slurmctld$/ {print $1; exit}'"
JOB_SCRIPT = "#!/bin/bash\ntrue\n"


def rss_mib(kib: str) -> float:
    """CONTROLLER_RSS_KIB's output in MiB; ValueError while slurmctld is not running."""
    if not kib.strip():
        raise ValueError("slurmctld is not running")
    return int(kib.split()[0]) / 1024


@dataclass
class StormResult:
    rest_ids: list[int] = field(default_factory=list)
    sbatch_ids: list[int] = field(default_factory=list)
    rest_submit_s: float = 0.0  # first request -> last REST answer
    sbatch_submit_s: float = 0.0
    drain_s: float = 0.0  # first submission -> every job final in the controller
    records_s: float = 0.0  # first submission -> every job final in accounting
    rest_errors: list[str] = field(default_factory=list)  # answered errors, each then retried
    unanswered: int = 0  # REST requests with no answer at all (each then retried)
    rest_slowest_s: float = 0.0  # the longest wait for one REST answer (an outage's mark)
    ctld_rss_mib: list[float] = field(default_factory=list)  # samples during the storm
    final: dict[int, str] = field(default_factory=dict)  # job -> state in accounting
    queued_names: int = 0  # jobs of this storm Slurm knows (no duplicate, no ghost)

    @property
    def rest_rate(self) -> float:
        return len(self.rest_ids) / self.rest_submit_s if self.rest_submit_s else 0.0

    @property
    def sbatch_rate(self) -> float:
        return len(self.sbatch_ids) / self.sbatch_submit_s if self.sbatch_submit_s else 0.0


@dataclass
class Storm:
    client: Client
    login: Callable[[str], str]  # a script in a login shell on the login node; its stdout
    rss_of_controller: Callable[[], float]  # slurmctld's resident memory now, MiB

    def rest_submit(self, name: str, result: StormResult, lock: threading.Lock) -> None:
        job = {
            "script": JOB_SCRIPT,
            "name": name,
            "current_working_directory": "/tmp",
            "standard_output": "/dev/null",
            "environment": ["PATH=/usr/bin:/bin"],
        }
        for _ in range(RETRIES):
            asked = time.monotonic()
            try:
                job_id = self.client.submit(job)
            except RestError as err:
                with lock:
                    if "no answer" in str(err):
                        result.unanswered += 1
                    else:
                        result.rest_errors.append(str(err))
                time.sleep(1)
                continue
            with lock:
                result.rest_ids.append(job_id)
                result.rest_slowest_s = max(result.rest_slowest_s, time.monotonic() - asked)
            return
        raise RestError(f"a REST client gave up after {RETRIES} tries: {result.rest_errors[-1:]}")

    def sbatch_client(self, name: str, count: int, pace_s: float = 0.0) -> list[int]:
        """One client: `count` sbatch calls in a row, in one login shell. While the controller
        is away sbatch fails ("Unable to contact slurm controller"): the client tries again, as
        a site's submission scripts do."""
        script = (
            f"for i in $(seq {count}); do if [ $i -gt 1 ]; then sleep {pace_s}; fi; "
            f"id=; for try in $(seq {RETRIES}); do "
            f"id=$(sbatch --parsable -J {name} -o /dev/null --wrap true) && break; "
            'echo "retrying: sbatch failed" >&2; sleep 1; done; '
            '[ -n "$id" ] || exit 1; echo "$id"; done'
        )
        return [int(line.split(";")[0]) for line in self.login(script).split()]

    def run(
        self,
        jobs: int,
        clients: int = 8,
        disrupt: Callable[[], None] | None = None,
        timeout_s: float = 900,
        pace_s: float = 0.0,
    ) -> StormResult:
        """`jobs` jobs, half over REST and half through sbatch, `clients` clients of each, each
        client waiting `pace_s` between its jobs (0: as fast as it can); `disrupt` runs once a
        quarter of the REST jobs are in."""
        name = f"storm-{uuid.uuid4().hex[:8]}"
        result, lock, stop = StormResult(), threading.Lock(), threading.Event()
        rest_jobs, sbatch_jobs = jobs - jobs // 2, jobs // 2

        def shares(count: int) -> list[int]:  # jobs per client, none empty
            split = [count // clients + (i < count % clients) for i in range(clients)]
            return [share for share in split if share]

        def sample_memory() -> None:
            while not stop.is_set():
                # No sample while the controller restarts.
                with contextlib.suppress(subprocess.SubprocessError, ValueError):
                    result.ctld_rss_mib.append(self.rss_of_controller())
                stop.wait(0.5)

        def rest_client(count: int) -> None:
            for i in range(count):
                if i:
                    time.sleep(pace_s)
                self.rest_submit(name, result, lock)

        def rest_all() -> None:
            started = time.monotonic()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(rest_client, shares(rest_jobs)))
            result.rest_submit_s = time.monotonic() - started

        def sbatch_all() -> None:
            started = time.monotonic()
            with ThreadPoolExecutor(clients) as pool:
                for ids in pool.map(
                    lambda n: self.sbatch_client(name, n, pace_s), shares(sbatch_jobs)
                ):
                    result.sbatch_ids += ids
            result.sbatch_submit_s = time.monotonic() - started

        def disruption() -> None:
            if disrupt is None:
                return
            while len(result.rest_ids) < rest_jobs // 4 and not stop.is_set():
                time.sleep(0.05)
            disrupt()

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(3) as pool:
                for future in [pool.submit(f) for f in (rest_all, sbatch_all, disruption)]:
                    future.result(timeout=timeout_s)
            ids = result.rest_ids + result.sbatch_ids
            self.wait(
                lambda: not self.login(f"squeue -h -n {name} -o %i").split(), started, timeout_s
            )
            result.drain_s = time.monotonic() - started
            self.wait(lambda: self.accounted(name, ids, result), started, timeout_s)
            result.records_s = time.monotonic() - started
        finally:
            stop.set()
            sampler.join()
        known = self.login(f"sacct -X -n -P -S now-1days --name {name} -o JobID")
        result.queued_names = len(known.split())
        return result

    def accounted(self, name: str, ids: list[int], result: StormResult) -> bool:
        """Every job has a final state in accounting (sacct on the login node)."""
        rows = self.login(f"sacct -X -n -P -S now-1days --name {name} -o JobID,State")
        states = dict(row.split("|", 1) for row in rows.split() if "|" in row)
        result.final = {job: states.get(str(job), "").split()[0] if states.get(str(job)) else ""
                        for job in ids}  # fmt: skip
        return all(state in FINAL_STATES for state in result.final.values())

    @staticmethod
    def answered(done: Callable[[], bool]) -> bool:
        """done(), or False while the daemon it asks is away (whatever `login` raises then)."""
        try:
            return done()
        except Exception:
            return False

    @staticmethod
    def wait(done: Callable[[], bool], started: float, timeout_s: float) -> None:
        while not Storm.answered(done):
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"the storm did not drain in {timeout_s:.0f} s")
            time.sleep(0.5)


def report(result: StormResult) -> dict[str, float]:
    """The storm's figures as make bench-cluster rows."""
    rss = result.ctld_rss_mib or [0.0]
    return {
        "storm_rest_jobs_per_s": result.rest_rate,
        "storm_sbatch_jobs_per_s": result.sbatch_rate,
        "storm_drain_s": result.drain_s,
        "storm_records_s": result.records_s,
        "storm_ctld_rss_before_mib": rss[0],
        "storm_ctld_rss_peak_mib": max(rss),
    }
