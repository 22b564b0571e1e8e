"""Submit, watch and cancel Slurm jobs over the REST API (slurmrestd), from any machine that
reaches it: Python's standard library only, so it runs on a laptop, in a notebook or in CI.

    eval "$(make -s token)"                  # SLURM_JWT and SLURMLAB_REST (slurmlab token)
    python3 jobs/rest_submit.py ping
    python3 jobs/rest_submit.py submit --wait -- hostname        # a --wrap job, then its end
    python3 jobs/rest_submit.py submit --script job.sh --nodes 2 --time 10
    python3 jobs/rest_submit.py show JOBID | sacct JOBID | cancel JOBID

On a site: SLURM_JWT from its `scontrol token` (or its own token service) and the API's address
in SLURMLAB_REST (or --url). The API is Slurm's own: what this sends is what any client sends.

One difference from sbatch users meet at once: the REST API does not read #SBATCH lines. sbatch
reads them on the client; slurmrestd takes the job's options as JSON fields only, so this client
gives the options it knows (--nodes, --time, ...) as fields and leaves the script as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

API = "v0.0.42"  # Slurm 24.11's data parser: /slurm/v0.0.42/..., /slurmdb/v0.0.42/...
FINAL_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "TIMEOUT",
}  # fmt: skip
# A job's environment when the caller gives none: the REST API has no caller's shell to copy it
# from (sbatch's default --export=ALL), and slurmctld refuses a batch job without one. This one
# asks slurmd to load the user's login environment on the node (as sbatch --get-user-env does),
# so the job finds the same python, PATH and HOME as a job submitted from a login shell.
DEFAULT_ENVIRONMENT = ["SLURM_GET_USER_ENV=1"]


class RestError(Exception):
    """The API answered with an error, or did not answer: the message says which and why."""


class Client:
    def __init__(self, url: str, token: str, user: str | None = None, timeout: float = 30):
        self.url, self.token, self.user, self.timeout = url.rstrip("/"), token, user, timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request; the decoded answer. Slurm's own errors come back as RestError."""
        headers = {"X-SLURM-USER-TOKEN": self.token, "Content-Type": "application/json"}
        if self.user:
            headers["X-SLURM-USER-NAME"] = self.user
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                answer = json.loads(text)
            except ValueError:
                raise RestError(f"{method} {path}: HTTP {err.code} {text.strip()[:200]}") from err
            raise RestError(f"{method} {path}: HTTP {err.code}: {said(answer)}") from err
        except (urllib.error.URLError, OSError) as err:
            raise RestError(
                f"{method} {path}: no answer from {self.url} ({err}); is the cluster up "
                "(make status prints the REST API's address)?"
            ) from err
        if answer.get("errors"):
            raise RestError(f"{method} {path}: {said(answer)}")
        return answer

    def ping(self) -> dict[str, Any]:
        return self.call("GET", f"/slurm/{API}/ping")

    def submit(self, job: dict[str, Any]) -> int:
        answer = self.call("POST", f"/slurm/{API}/job/submit", {"job": job})
        return int(answer["job_id"])

    def job(self, job_id: int) -> dict[str, Any]:
        """The job as the controller knows it (while it runs and for MinJobAge after)."""
        return self.call("GET", f"/slurm/{API}/job/{job_id}")["jobs"][0]

    def state(self, job_id: int) -> str:
        """PENDING, RUNNING, COMPLETED, ...: the controller's view, else accounting's."""
        try:
            return self.job(job_id)["job_state"][0]
        except (RestError, IndexError):
            return self.accounted(job_id)["state"]["current"][0]

    def accounted(self, job_id: int) -> dict[str, Any]:
        """The job's record in accounting (slurmdbd), as sacct shows it."""
        jobs = self.call("GET", f"/slurmdb/{API}/job/{job_id}")["jobs"]
        if not jobs:
            raise RestError(f"job {job_id} has no record in accounting (yet)")
        return jobs[0]

    def cancel(self, job_id: int) -> None:
        answer = self.call("DELETE", f"/slurm/{API}/job/{job_id}")
        # A refused cancel is an HTTP 200 whose per-job status carries Slurm's error.
        for status in answer.get("status", []):
            error = status.get("error", {})
            if error.get("code"):
                raise RestError(f"cancel {job_id}: {error.get('message') or error.get('string')}")

    def wait(self, job_id: int, timeout: float = 600, poll: float = 1.0) -> str:
        """Until the job reaches a final state; that state."""
        deadline = time.monotonic() + timeout
        while (state := self.state(job_id)) not in FINAL_STATES:
            if time.monotonic() > deadline:
                raise RestError(f"job {job_id} is still {state} after {timeout:.0f} s")
            time.sleep(poll)
        return state


def said(answer: dict[str, Any]) -> str:
    """Slurm's errors in an answer, as one line."""
    errors = answer.get("errors") or []
    return (
        "; ".join(f"{e.get('description') or e.get('error')} ({e.get('error')})" for e in errors)
        or json.dumps(answer)[:200]
    )


def job_description(args: argparse.Namespace) -> dict[str, Any]:
    if args.script:
        script = Path(args.script).read_text()
    elif args.command:
        script = f"#!/bin/bash\nexec {shlex.join(args.command)}\n"
    else:
        raise SystemExit("error: give a command (submit -- hostname) or --script FILE")
    job: dict[str, Any] = {
        "script": script,
        "name": args.name,
        "current_working_directory": args.chdir,
        "environment": args.env or DEFAULT_ENVIRONMENT,
    }
    if args.output:
        job["standard_output"] = args.output
    if args.partition:
        job["partition"] = args.partition
    if args.account:
        job["account"] = args.account
    if args.nodes:
        job["minimum_nodes"] = job["maximum_nodes"] = args.nodes
    if args.time:
        job["time_limit"] = {"set": True, "number": args.time}
    return job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SLURMLAB_REST"), help="$SLURMLAB_REST")
    parser.add_argument("--user", help="X-SLURM-USER-NAME (default: the token's user)")
    commands = parser.add_subparsers(dest="what", required=True)
    commands.add_parser("ping")
    submit = commands.add_parser("submit", help="submit a job; print its id")
    submit.add_argument("--script", help="a batch script (its #SBATCH lines are not read)")
    submit.add_argument("--name", default="rest-job")
    submit.add_argument("--chdir", default="/tmp", help="the job's working directory")
    submit.add_argument("--output", help="its stdout file (default: slurm-%%j.out in --chdir)")
    submit.add_argument("--partition")
    submit.add_argument("--account")
    submit.add_argument("--nodes", type=int)
    submit.add_argument("--time", type=int, metavar="MINUTES")
    submit.add_argument("--env", action="append", metavar="KEY=VALUE", help="repeatable")
    submit.add_argument("--wait", action="store_true", help="then wait for its end")
    submit.add_argument("command", nargs="*", help="what --wrap would run")
    for name in ("show", "sacct", "cancel", "wait"):
        commands.add_parser(name).add_argument("job_id", type=int)
    args = parser.parse_args(argv)
    token = os.environ.get("SLURM_JWT")
    if not token or not args.url:
        print(
            'error: set SLURM_JWT and SLURMLAB_REST first: eval "$(make -s token)" (or '
            'eval "$(slurmlab token)") in the cluster\'s project',
            file=sys.stderr,
        )
        return 2
    client = Client(args.url, token, args.user)
    try:
        if args.what == "ping":
            print(json.dumps(client.ping()["pings"], indent=2))
        elif args.what == "submit":
            job_id = client.submit(job_description(args))
            print(job_id, flush=True)
            if args.wait:
                state = client.wait(job_id)
                print(state)
                return 0 if state == "COMPLETED" else 1
        elif args.what == "show":
            print(json.dumps(client.job(args.job_id), indent=2))
        elif args.what == "sacct":
            print(json.dumps(client.accounted(args.job_id), indent=2))
        elif args.what == "wait":
            print(client.wait(args.job_id))
        elif args.what == "cancel":
            client.cancel(args.job_id)
    except RestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
