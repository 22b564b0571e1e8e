"""The site's rules on a real cluster (slurm/site.yaml, slurmlab's default site): accounts,
QOS, limits, memory, several users and fair-share enforced as a production site enforces them,
and a changed site description applied to the running cluster.

Everything is typed as a user types it in `make shell` (`make shell AS=alice` for the second
user), and the site is changed with `make up SITE=...`. The one administrator's command
(resetting fair-share usage, so the ordering test does not depend on earlier runs) goes through
`docker exec` as root and says so in its test's name.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import yaml
from conftest import CHECKOUT, JOB_USER, PROJECT, REPO, SHARED, Cluster, make, slurmlab

from slurmlab import site as site_mod

OTHER = "alice"  # the default site's second user


def sbatch_refused(cluster: Cluster, args: str, user: str = JOB_USER) -> str:
    """sbatch that must be refused: Slurm's message, and no job in the queue for it."""
    proc = cluster.run(f"cd ~ && sbatch --parsable {args} --wrap true", user=user, check=False)
    assert proc.returncode != 0, f"sbatch {args} was accepted: job {proc.stdout.strip()}"
    return proc.stderr


def test_a_job_without_a_valid_account_is_refused(cluster: Cluster) -> None:
    said = sbatch_refused(cluster, "--account=no_such_account")
    assert "Invalid account or account/partition combination specified" in said
    # alice may not use ml, the job user's default account (she is in research only).
    said = sbatch_refused(cluster, "--account=ml", user=OTHER)
    assert "Invalid account" in said
    users = cluster.login("sacctmgr -n -P show user format=User,DefaultAccount").split()
    assert "alice|research" in users and "slurmlab|ml" in users, users


def test_qos_and_partition_time_limits_are_refused_at_submit(cluster: Cluster) -> None:
    """debug: MaxWall 30 min with DenyOnLimit; gpu: MaxTime 1 day (EnforcePartLimits=ALL)."""
    said = sbatch_refused(cluster, "--qos=debug --time=01:00:00")
    assert "QOSMaxWallDurationPerJobLimit" in said
    assert "Job violates accounting/QOS policy" in said
    said = sbatch_refused(cluster, "--time=2-00:00:00")
    assert "Requested time limit is invalid (missing or exceeds some limit)" in said
    said = sbatch_refused(cluster, "-p urgent --time=02:00:00")
    assert "Requested time limit is invalid" in said


def test_memory_is_scheduled_and_more_than_a_node_has_is_refused(cluster: Cluster) -> None:
    said = sbatch_refused(cluster, "--mem=64G")
    assert "Memory specification can not be satisfied" in said
    # What a job gets without asking: the partition's default per GPU, else per CPU.
    job = cluster.submit("-N1 --gpus-per-node=1 -o /dev/null --wrap 'sleep 1'")
    cpu_job = cluster.submit("-N1 -o /dev/null --wrap 'sleep 1'")
    assert cluster.wait_done(job)[0] == "COMPLETED" == cluster.wait_done(cpu_job)[0]
    got = cluster.login(f"sacct -X -n -P -j {job},{cpu_job} -o AllocTRES").split()
    assert "mem=8G" in got[0].split(","), got
    assert "mem=2G" in got[1].split(","), got


def test_a_step_over_its_memory_is_killed_by_over_memory_kill(cluster: Cluster) -> None:
    """A step that touches 600 MiB under --mem=200M. Without cgroups Slurm samples the step
    (JobAcctGatherParams=OverMemoryKill) and cancels it; a cgroup site ends it OUT_OF_MEMORY
    (README, "Memory")."""
    eat = (
        "import time; b = bytearray(600 << 20); b[::4096] = b'x' * len(b[::4096]); "
        "print('allocated', flush=True); time.sleep(60); print('survived', flush=True)"
    )
    log = cluster.tmp_path("oom") + ".out"
    job, status = cluster.sbatch(
        f"--mem=200M -o {log} --wrap {shlex.quote('srun python3 -c ' + shlex.quote(eat))}",
        timeout=120,
    )
    assert status != 0
    out = cluster.login(f"cat {log}")
    assert "allocated" in out and "survived" not in out, out
    assert re.search(r"StepId=\d+\.0 exceeded memory limit \(\d+ > 209715200\)", out), out
    assert "Exceeded job memory limit" in out
    rows = cluster.login(f"sacct -n -P -j {job} -o JobID,State,MaxRSS,ReqMem").splitlines()
    step = next(r.split("|") for r in rows if r.startswith(f"{job}.0|"))
    assert step[1].startswith("CANCELLED"), rows
    assert int(step[2].rstrip("K")) > 200 * 1024, "MaxRSS shows what it took before the kill"
    assert cluster.sacct(job, "State,ReqMem") == ["FAILED", "200M"]


def test_jobs_over_max_tres_per_user_pend_with_the_qos_reason(cluster: Cluster) -> None:
    """debug allows 2 GPUs per user at a time: the second 2-GPU job waits for the first."""
    first = cluster.submit(
        "--qos=debug --time=5 -N2 --gpus-per-node=1 -o /dev/null --wrap 'sleep 20'"
    )
    second = cluster.submit(
        "--qos=debug --time=5 -N2 --gpus-per-node=1 -o /dev/null --wrap 'sleep 1'"
    )
    try:
        cluster.wait_for(
            f"job {first} to run", lambda: cluster.queued_state(first) == "RUNNING", 60
        )
        reasons: list[str] = []  # the reason is set once the scheduler has looked at the job

        def pending_for_the_qos() -> bool:
            reasons.append(cluster.login(f"squeue -h -j {second} -o '%T %r'").strip())
            return reasons[-1] == "PENDING QOSMaxGRESPerUser"

        try:
            cluster.wait_for(f"job {second} to pend for its QOS", pending_for_the_qos, 15)
        except AssertionError as err:
            raise AssertionError(f"{err}; squeue said: {sorted(set(reasons))}") from None
        assert cluster.queued_state(first) == "RUNNING"
        assert cluster.wait_done(second, timeout=120)[0] == "COMPLETED"
        starts = cluster.login(f"sacct -X -n -P -j {first},{second} -o End,Start").split()
        assert starts[1].split("|")[1] >= starts[0].split("|")[0], "it started when the first ended"
    finally:
        cluster.run(f"scancel {first} {second}", check=False)


def test_users_cannot_touch_each_others_jobs_or_read_their_files(cluster: Cluster) -> None:
    # A run directory and a log under the shared filesystem, as the trainer's jobs make them.
    body = "mkdir $SLURMLAB_SHARED/runs/$SLURM_JOB_ID; sleep 120"
    mine = cluster.submit(f"-N1 -o {SHARED}/logs/%j.out --wrap {shlex.quote(body)}")
    try:
        cluster.wait_for(f"job {mine} to run", lambda: cluster.queued_state(mine) == "RUNNING", 60)
        # Slurm refuses with one of its two permission errors (which, depends on the RPC).
        refused = re.compile(r"Access/permission denied|Invalid user id|Permission denied")
        for command in (
            f"scancel {mine}",
            f"scontrol hold {mine}",
            f"scontrol requeue {mine}",
            f"scontrol update JobId={mine} TimeLimit=5",
            f"cat {SHARED}/logs/{mine}.out",
            f"ls {SHARED}/runs/{mine}",
        ):
            proc = cluster.run(command, user=OTHER, check=False)
            assert proc.returncode != 0 and refused.search(proc.stderr), (
                f"{OTHER}: {command}: {proc.stdout}{proc.stderr}"
            )
        assert cluster.queued_state(mine) == "RUNNING", "the job is untouched"
        # alice's own job runs under her uid from her home, which every node shares.
        script = (
            "cd ~ && sbatch --parsable --wait -N1 -o out-%j.txt "
            "--wrap 'id -un; id -u; pwd; umask' && cat out-*.txt && rm out-*.txt"
        )
        out = cluster.run(script, user=OTHER).stdout.split()
        uid = cluster.run("id -u", user=OTHER).stdout.strip()
        assert out[1:5] == [OTHER, uid, f"/home/{OTHER}", "0077"], out
        assert mine not in [
            int(j) for j in cluster.run("sacct -X -n -o JobID", user=OTHER).stdout.split()
        ]
    finally:
        cluster.run(f"scancel {mine}", check=False)
    assert cluster.login(f"stat -c %a {SHARED}/runs/{mine} {SHARED}/logs/{mine}.out").split() == [
        "700",
        "600",
    ]


def make_shell(user: str | None, typed: str) -> subprocess.CompletedProcess[str]:
    """`make shell [AS=user]` with `typed` on its standard input (make's own chatter off: the
    suite may run under make, which would announce the directory)."""
    command = ["make", "-s", "--no-print-directory", "shell", *([f"AS={user}"] if user else [])]
    return subprocess.run(
        [*command, f"COMPOSE_PROJECT_NAME={PROJECT}"],
        cwd=CHECKOUT, input=typed, text=True, capture_output=True, timeout=120,
    )  # fmt: skip


def test_make_shell_as_another_user_logs_in_as_that_user() -> None:
    # AS is also make's name for the assembler: without AS=, the job user, whatever make says
    assert make_shell(None, "id -un\n").stdout.split() == [JOB_USER]
    proc = make_shell("alice", "id -un; sacctmgr -n -P show assoc user=alice format=Account\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["alice", "research"]
    proc = make_shell("mallory", "id -un\n")
    assert proc.returncode == 2
    assert "AS=mallory: the cluster's site (default) has no user mallory" in proc.stderr


def fairshare(cluster: Cluster) -> dict[str, float]:
    rows = cluster.login("sshare -n -P -a -o Account,User,FairShare").splitlines()
    return {f"{r.split('|')[1]}@{r.split('|')[0].strip()}": float(r.split("|")[2])
            for r in rows if r.split("|")[1]}  # fmt: skip


def test_fair_share_orders_pending_jobs_after_one_user_used_the_cluster_usage_reset_as_root(
    cluster: Cluster,
) -> None:
    """slurmlab (account ml) uses the cluster, alice (research) does not: once the fair-share
    factors are recomputed (PriorityCalcPeriod, a minute), alice's job outranks slurmlab's in
    sprio and starts first. Usage accrued by earlier tests is reset first, as an administrator
    does (sacctmgr ... set RawUsage=0, through docker exec as root)."""
    cluster.run(
        "sacctmgr -i modify account where name=ml,research set RawUsage=0",  # and their users
        user="root",
    )
    _, status = cluster.sbatch("-N4 --gpus-per-node=1 -o /dev/null --wrap 'srun sleep 8'")
    assert status == 0
    cluster.wait_for(
        "sshare to rank alice above slurmlab",
        lambda: fairshare(cluster)["alice@research"] > fairshare(cluster)["slurmlab@ml"],
        150,
    )
    usage = cluster.login("sshare -n -P -a -o Account,User,RawUsage")
    assert re.search(r"ml\|slurmlab\|[1-9]", usage), usage

    blocker = cluster.submit("-N4 --gpus-per-node=1 -o /dev/null --wrap 'sleep 300'")
    try:
        cluster.wait_for(
            "the blocker to run", lambda: cluster.queued_state(blocker) == "RUNNING", 60
        )
        whole = "-N4 --gpus-per-node=1 -o /dev/null --wrap 'sleep 1'"
        used = cluster.submit(whole)
        fresh = int(cluster.run(f"cd ~ && sbatch --parsable {whole}", user=OTHER).stdout)
        prio: dict[str, str] = {}

        def both_ranked() -> bool:  # sprio lists a job once the scheduler has looked at it
            # (not `sprio -j`: 24.11's refuses pending jobs it lists without it, "Invalid job id")
            out = cluster.run("sprio -h -o '%i %Y'", check=False).stdout
            prio.update(line.split() for line in out.splitlines())
            return {str(used), str(fresh)} <= set(prio)

        cluster.wait_for("sprio to rank both jobs", both_ranked, 30)
        assert int(prio[str(fresh)]) > int(prio[str(used)]), prio
        cluster.run(f"scancel {blocker}")
        for each in (used, fresh):
            assert cluster.wait_done(each, timeout=120)[0] == "COMPLETED"
        rows = dict(
            r.split("|")
            for r in cluster.login(f"sacct -X -n -P -j {used},{fresh} -o JobID,Start").split()
        )
        assert rows[str(fresh)] < rows[str(used)], f"alice's job started first: {rows}"
    finally:
        cluster.run(f"scancel {blocker}", check=False)
    usage = cluster.login("sacct -a -X -n -P -S now-1hour -o User,Account | sort -u").split()
    assert {"slurmlab|ml", "alice|research"} <= set(usage), usage


def changed_default_site(tmp_path: Path) -> Path:
    """The default site plus a QOS, a partition of two nodes and a user, and ml's share raised."""
    data = site_mod.yaml_load(site_mod.default_site_path().read_text())
    data["qos"]["long"] = {"priority": 5, "max_wall": "2-00:00:00"}
    data["partitions"]["cpu"] = {"nodes": 2, "max_time": "01:00:00", "default_time": "00:05:00"}
    data["users"]["bob"] = {"default_account": "research", "qos": ["normal", "long"]}
    data["accounts"]["ml"]["fairshare"] = 70
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_changed_site_is_applied_to_the_running_cluster_and_its_jobs_run_through(
    cluster: Cluster, tmp_path: Path
) -> None:
    running = cluster.submit("-N1 -o /dev/null --wrap 'sleep 30'")
    cluster.wait_for(
        f"job {running} to run", lambda: cluster.queued_state(running) == "RUNNING", 60
    )
    try:
        proc = make("up", f"SITE={changed_default_site(tmp_path)}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for said in ("add QOS long", "add user bob to research", "account ml: Fairshare=70",
                     "scontrol reconfigure"):  # fmt: skip
            assert said in proc.stdout, proc.stdout
        assert cluster.queued_state(running) == "RUNNING", "the running job runs on"
        assert cluster.login("sinfo -h -p cpu -N -o %N").split() == ["node1", "node2"]
        bob = cluster.run(
            "cd ~ && sbatch --parsable --wait -p cpu --qos=long -o /dev/null "
            "--wrap 'id -un >~/who' && cat ~/who",
            user="bob",
        ).stdout.split()
        assert bob[-1] == "bob"
        again = make("up")
        assert "nothing to change" in again.stdout, again.stdout + again.stderr
        assert cluster.wait_done(running)[0] == "COMPLETED"
    finally:
        back = make("up", "SITE=default")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "remove user bob" in back.stdout and "remove QOS long" in back.stdout, back.stdout
    assert "cpu" not in cluster.login("sinfo -h -o %R").split()
    # Accounting keeps every job: the one that ran through, and the removed user's.
    assert cluster.sacct(running)[0] == "COMPLETED"
    assert "bob|COMPLETED" in cluster.login("sacct -a -X -n -P -u bob -S now-1hour -o User,State")


def test_a_bad_site_is_refused_before_anything_changes(cluster: Cluster, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "accounts:\n  ml: {parent: nowhere}\nusers:\n  slurmlab: {qos: [fast]}\npartitions: {}\n"
    )
    proc = make("up", f"SITE={bad}")
    assert proc.returncode == 2
    for said in ("accounts.ml.parent: no account 'nowhere' in accounts",
                 "users.slurmlab: a user needs a default_account",
                 "users.slurmlab.qos: no QOS 'fast' in qos: add it there",
                 "partitions: a site needs at least one partition"):  # fmt: skip
        assert said in proc.stderr, proc.stderr
    assert "nothing to change" in make("up").stdout, "the cluster still runs the default site"
    check = make("site-check")
    assert "nothing: the cluster runs this site" in check.stdout, check.stdout


def test_site_import_writes_a_site_that_site_check_accepts(tmp_path: Path) -> None:
    """From the outputs of a 64-node site (tests/unit/fixtures/site_import), through the CLI."""
    out = tmp_path / "imported.yaml"
    proc = slurmlab("site", "import", str(REPO / "tests/unit/fixtures/site_import"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "partition debug: 4 of the site's 64 nodes" in proc.stderr
    check = slurmlab("site", "check", "--site", str(out))
    assert check.returncode == 0, check.stderr
    assert "PartitionName=debug Nodes=slurmlab_debug" in check.stdout
    assert "add QOS high" in check.stdout, "check shows what up would do on the running cluster"
