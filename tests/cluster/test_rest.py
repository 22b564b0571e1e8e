"""The REST API (slurmrestd with JWT), driven as its users drive it: from the host, on the
127.0.0.1 address `make status` prints, with tokens from `make token`, through the README's
client (jobs/rest_submit.py) and, for what a client should never send, raw HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import shlex
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import CHECKOUT, JOB_USER, PROJECT, REPO, SHARED, Cluster, make

from bench.rest_storm import CONTROLLER_RSS_KIB, Storm, StormResult, rss_mib
from jobs.rest_submit import API, Client, RestError

ALICE = "alice"  # the default site's second user (slurm/site.yaml)


@dataclass
class Token:
    jwt: str
    url: str

    def client(self, user: str | None = None) -> Client:
        return Client(self.url, self.jwt, user)


def token(*settings: str) -> Token:
    """`eval "$(make -s token ...)"`: the lines it prints, read as the shell would."""
    proc = make("-s", "token", *settings)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = dict(re.findall(r"^export (\w+)=(.*)$", proc.stdout, re.M))
    assert set(found) == {"SLURM_JWT", "SLURMLAB_REST"}, proc.stdout
    return Token(shlex.split(found["SLURM_JWT"])[0], shlex.split(found["SLURMLAB_REST"])[0])


@pytest.fixture(scope="module")
def rest(cluster: Cluster) -> Token:
    return token()


def raw(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One HTTP request as any client may send it: (status, decoded JSON or {"text": ...})."""
    where = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
        answer = conn.getresponse()
        text = answer.read().decode(errors="replace")
    finally:
        conn.close()
    try:
        return answer.status, json.loads(text)
    except ValueError:
        return answer.status, {"text": text}


def errors_of(answer: dict[str, Any]) -> str:
    return json.dumps(answer.get("errors") or answer.get("text") or answer)


def job(name: str, script: str = "#!/bin/bash\nhostname\n", **fields: Any) -> dict[str, Any]:
    return {
        "script": script,
        "name": name,
        "current_working_directory": "/tmp",
        "standard_output": "/dev/null",
        "environment": ["PATH=/usr/bin:/bin"],
        **fields,
    }


def jobs_named(cluster: Cluster, name: str) -> list[str]:
    """Every job of that name Slurm knows: queued or in accounting."""
    queued = cluster.login(f"squeue -h -n {name} -o %i").split()
    accounted = cluster.login(f"sacct -X -n -P -S now-1days --name {name} -o JobID").split()
    return sorted(set(queued) | set(accounted))


# ---- what users do ---------------------------------------------------------------------------


def test_ping_submit_poll_account_and_cancel_from_the_host(cluster: Cluster, rest: Token) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", rest.url)
    status = make("status")
    assert f"REST API:      {rest.url}" in status.stdout, status.stdout
    client = rest.client()
    pings = client.ping()["pings"]
    assert pings and pings[0]["pinged"] == "UP", pings
    out = f"{SHARED}/tests/rest-{os.getpid()}-%j.out"
    job_id = client.submit(job("rest-hostname", standard_output=out))
    assert client.wait(job_id, timeout=120) == "COMPLETED"
    record = client.accounted(job_id)
    assert record["user"] == "slurmlab" and record["state"]["current"] == ["COMPLETED"], record
    assert record["account"] == "ml", "the user's default account (slurm/site.yaml)"
    assert cluster.sacct(job_id, "State,User,JobName") == ["COMPLETED", "slurmlab", "rest-hostname"]
    written = cluster.login(f"cat {out.replace('%j', str(job_id))}").strip()
    assert re.fullmatch(r"node\d+", written), written
    long = client.submit(job("rest-sleep", "#!/bin/bash\nsleep 300\n"))
    cluster.wait_for("the job to run", lambda: client.state(long) == "RUNNING", 60)
    client.cancel(long)
    assert client.wait(long, timeout=60) == "CANCELLED"
    assert cluster.sacct(long, "State")[0].startswith("CANCELLED")


def test_a_job_without_an_environment_gets_its_users_login_environment(
    cluster: Cluster, rest: Token
) -> None:
    """The client's default: the job asks for the user's login environment, as --export=NONE
    does (the REST API has no caller's shell to copy), so the cluster's python is found."""
    out = f"{SHARED}/tests/rest-env-{os.getpid()}.out"
    proc = subprocess.run(
        ["python3", "jobs/rest_submit.py", "submit", "--wait", "--output", out, "--",
         "python", "-c", "import sys, os; print(sys.executable, os.environ['USER'])"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "SLURM_JWT": rest.jwt, "SLURMLAB_REST": rest.url},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[-1] == "COMPLETED"
    assert cluster.login(f"cat {out}").split() == ["/opt/venv/bin/python", "slurmlab"]


def test_each_token_acts_as_its_user_only(cluster: Cluster, rest: Token) -> None:
    alice = token(f"AS={ALICE}")
    theirs = alice.client().submit(job("rest-alice", "#!/bin/bash\nsleep 120\n"))
    assert cluster.login(f"squeue -h -j {theirs} -o %u").strip() == ALICE
    mine = rest.client().submit(job("rest-mine", "#!/bin/bash\nsleep 120\n"))
    try:
        with pytest.raises(RestError, match=r"(?i)access|permission|denied"):
            alice.client().cancel(mine)
        assert cluster.queued_state(mine) in ("PENDING", "RUNNING"), "not cancelled"
        # A token names its user; a header naming another is refused, nothing submitted.
        with pytest.raises(RestError, match=r"(?i)auth"):
            alice.client(user="slurmlab").submit(job("rest-impostor"))
        assert jobs_named(cluster, "rest-impostor") == []
    finally:
        rest.client().cancel(mine)
        alice.client().cancel(theirs)


def forged(user: str, key: bytes, lifespan_s: int = 600) -> str:
    """An HS256 JWT as Slurm's own (scontrol token), signed with a key that is not the
    cluster's."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"exp": now + lifespan_s, "iat": now, "sun": user}).encode())
    signature = hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


def test_no_token_a_wrong_one_or_an_expired_one_is_refused_and_nothing_submitted(
    cluster: Cluster, rest: Token
) -> None:
    body = json.dumps({"job": job("rest-refused")}).encode()
    submit = f"/slurm/{API}/job/submit"
    status, answer = raw(rest.url, "POST", submit, body)
    assert status == 401, (status, answer)
    expired = token("LIFESPAN=1")
    time.sleep(2.5)
    for what, jwt in [
        ("garbage", "not-a-token"),
        ("another key's", forged("slurmlab", os.urandom(32))),
        ("expired", expired.jwt),
    ]:
        status, answer = raw(rest.url, "POST", submit, body, {"X-SLURM-USER-TOKEN": jwt})
        assert status in (401, 403, 500, 502, 511), (what, status, answer)
        assert re.search(r"(?i)auth", errors_of(answer)), (what, answer)
        status, answer = raw(rest.url, "GET", f"/slurm/{API}/jobs", None,
                             {"X-SLURM-USER-TOKEN": jwt})  # fmt: skip
        assert status != 200 or answer.get("errors"), (what, "read jobs", answer)
    assert jobs_named(cluster, "rest-refused") == []
    bad = make("-s", "token", "LIFESPAN=soon")
    assert bad.returncode != 0 and "LIFESPAN=3600" in bad.stderr, bad.stderr
    stranger = make("-s", "token", "AS=mallory")
    assert stranger.returncode != 0 and "has no user mallory" in stranger.stderr, stranger.stderr


@pytest.mark.parametrize(
    ("what", "body", "said"),
    [
        ("malformed JSON", b'{"job": {"script": ', r"(?i)unable to parse"),
        ("no script", json.dumps({"job": {"name": "rest-bad", "current_working_directory": "/tmp",
                                          "environment": ["PATH=/bin"]}}).encode(),
         r"(?i)script"),
        ("a partition that does not exist",
         json.dumps({"job": job("rest-bad", partition="no_such_partition")}).encode(),
         r"(?i)partition"),
        ("more nodes than exist",
         json.dumps({"job": job("rest-bad", minimum_nodes=64)}).encode(),
         r"(?i)node|processors"),
    ],
    ids=["malformed-json", "no-script", "no-such-partition", "too-many-nodes"],
)  # fmt: skip
def test_a_job_slurm_rejects_comes_back_with_slurms_error_and_the_daemon_answers_on(
    cluster: Cluster, rest: Token, what: str, body: bytes, said: str
) -> None:
    headers = {"X-SLURM-USER-TOKEN": rest.jwt}
    status, answer = raw(rest.url, "POST", f"/slurm/{API}/job/submit", body, headers)
    # Slurm's errors come as JSON "errors"; a body that is not JSON, as a plain-text 400.
    assert status >= 400 and (answer.get("errors") or answer.get("text")), (what, status, answer)
    assert re.search(said, errors_of(answer)), (what, answer)
    assert "job_id" not in answer or not answer["job_id"], answer
    assert rest.client().ping()["pings"][0]["pinged"] == "UP"


def test_an_unknown_field_is_named_in_the_answer(cluster: Cluster, rest: Token) -> None:
    body = json.dumps({"job": job("rest-unknown", no_such_field=1)}).encode()
    headers = {"X-SLURM-USER-TOKEN": rest.jwt}
    status, answer = raw(rest.url, "POST", f"/slurm/{API}/job/submit", body, headers)
    said = json.dumps(answer.get("warnings", [])) + errors_of(answer)
    assert "no_such_field" in said, (status, answer)
    if status == 200 and answer.get("job_id"):  # Slurm warns and submits the rest
        assert rest.client().wait(int(answer["job_id"]), timeout=120) == "COMPLETED"


def test_a_huge_request_and_a_flood_of_pings_leave_the_daemon_up(
    cluster: Cluster, rest: Token
) -> None:
    before = restarts(cluster)
    huge = b'{"job": {"script": "' + b"x" * (64 << 20) + b'"}}'
    try:
        status, answer = raw(rest.url, "POST", f"/slurm/{API}/job/submit", huge,
                             {"X-SLURM-USER-TOKEN": rest.jwt})  # fmt: skip
        assert status >= 400, (status, str(answer)[:300])
    except (ConnectionError, http.client.HTTPException):
        pass  # the daemon may close the connection on a request it will not read: also fine
    answered = 0
    lock = threading.Lock()

    def ping(_: int) -> None:
        nonlocal answered
        status, answer = raw(rest.url, "GET", f"/slurm/{API}/ping", None,
                             {"X-SLURM-USER-TOKEN": rest.jwt})  # fmt: skip
        if status == 200 and answer["pings"]:
            with lock:
                answered += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(ping, range(1000)))
    assert answered == 1000
    assert rest.client().ping()["pings"][0]["pinged"] == "UP"
    assert restarts(cluster) == before, "slurmrestd never restarted"


def restarts(cluster: Cluster) -> str:
    """slurmrestd's container start time and restart count (docker inspect)."""
    return subprocess.run(
        ["docker", "inspect", "-f", "{{.State.StartedAt}} {{.RestartCount}}",
         cluster.container_id("slurmrestd")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


# ---- a storm, with faults ----------------------------------------------------------------------


def storm(cluster: Cluster, rest: Token) -> Storm:
    def rss() -> float:
        return rss_mib(cluster.run(CONTROLLER_RSS_KIB, user="root", check=False).stdout)

    # The sbatch clients' shells, squeue and sacct run on a compute node, as the job user: here
    # the login node is the controller's container, and restarting that container would end the
    # shells themselves, which a site's controller restart (its own host) does not.
    def shell(script: str) -> str:
        return cluster.run(script, service="node1", user=JOB_USER, timeout=900).stdout

    return Storm(rest.client(), shell, rss)


def check_storm(result: StormResult, jobs: int) -> None:
    ids = result.rest_ids + result.sbatch_ids
    assert len(ids) == jobs and len(set(ids)) == jobs, "every client got its job's id"
    assert set(result.final.values()) == {"COMPLETED"}, result.final
    assert result.queued_names == jobs, "no job lost, none submitted twice"
    assert result.ctld_rss_mib and min(result.ctld_rss_mib) > 1, "slurmctld's memory was sampled"


def test_a_storm_through_a_controller_restart_loses_no_job(cluster: Cluster, rest: Token) -> None:
    """The controller stopped for 5 s and started again in the middle (as a host's systemd
    restarts a daemon), while the clients go on submitting (one job every 3 s each): a request
    waits for the controller (Slurm's client retries it) or fails with an error to retry, and
    every job runs once."""

    def restart() -> None:
        cluster.dc("stop", "-t", "5", "slurmctld")
        time.sleep(5)
        cluster.dc("start", "slurmctld")

    try:
        result = storm(cluster, rest).run(jobs=24, clients=4, disrupt=restart, pace_s=3)
    finally:
        cluster.dc("start", "slurmctld")
    # A request sent while the controller was away waited for it: the storm met the restart.
    assert result.rest_slowest_s >= 2 or result.rest_errors or result.unanswered, result
    check_storm(result, 24)
    cluster.wait_idle()


def test_a_storm_while_slurmdbd_is_down_keeps_every_record(cluster: Cluster, rest: Token) -> None:
    """slurmdbd stopped for 30 s in the middle: the controller keeps taking jobs and spools
    their records, which reach accounting once slurmdbd is back."""

    def outage() -> None:
        cluster.dc("stop", "slurmdbd")
        time.sleep(30)
        cluster.dc("start", "slurmdbd")

    try:
        result = storm(cluster, rest).run(jobs=24, clients=4, disrupt=outage, pace_s=3)
    finally:
        cluster.dc("start", "slurmdbd")
    check_storm(result, 24)
    assert result.records_s >= 30 or result.drain_s < 30


# ---- the README ----------------------------------------------------------------------------------

README_BLOCK = re.compile(r"^<!-- rest-api -->\n```[^\n]*\n(.*?)^```", re.M | re.S)


def test_readme_rest_api_block_runs_as_written_on_the_host(cluster: Cluster) -> None:
    """On the host, in the checkout, as the README says; `make` here is the test cluster's
    (COMPOSE_PROJECT_NAME, as every test's make)."""
    blocks = README_BLOCK.findall((REPO / "README.md").read_text())
    assert len(blocks) == 1, "README.md marks one block with <!-- rest-api -->"
    script = (
        "set -euo pipefail\n"
        f'make() {{ command make "$@" COMPOSE_PROJECT_NAME={PROJECT}; }}\n' + blocks[0]
    )
    proc = subprocess.run(
        ["bash", "-c", script], cwd=CHECKOUT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '"pinged": "UP"' in proc.stdout, proc.stdout
    assert re.search(r"^COMPLETED$", proc.stdout, re.M), proc.stdout
    assert re.search(r'"current": \[\s*"COMPLETED"', proc.stdout), proc.stdout
    assert re.search(r"^CANCELLED$", proc.stdout, re.M), proc.stdout
