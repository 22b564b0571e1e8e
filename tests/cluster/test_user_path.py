"""What a user meets in `make shell`: the same Python everywhere, output in their checkout, every
sbatch --export form, job accounting, fast requeues, nodes that come back on new addresses, one
shared-root setting, and results readable on the host."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import CHECKOUT, JOB_USER, MOUNT, NODES, SHARED, Cluster, copy_checkout, make

PYTHON_PROBE = (
    "command -v python; python -c 'import sys, torch, torchvision, submitit, yaml, psutil; "
    "print(sys.executable, torch.__version__, submitit.__version__)'"
)


def nodes_up(cluster: Cluster) -> dict[str, str]:
    rows = cluster.login("sinfo -h -N -o '%N %t'").split("\n")
    return dict(row.split() for row in rows if row.strip())


@pytest.mark.parametrize("shell", ["bash -lc", "bash -c"], ids=["login-shell", "plain-shell"])
def test_every_container_gives_the_job_user_the_same_python(cluster: Cluster, shell: str) -> None:
    """Through `docker exec` on each container: the login shell of `make shell` exists only on
    the login node, and the plain shell is what a job's own scripts get."""
    services = ["slurmctld", *NODES]
    probes = {
        service: subprocess.Popen(
            ["docker", "exec", "-u", JOB_USER, cluster.container_id(service), *shell.split(),
             PYTHON_PROBE],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for service in services
    }  # fmt: skip
    seen = {}
    for service, probe in probes.items():  # all at once: each imports torch
        out, err = probe.communicate(timeout=300)
        assert probe.returncode == 0, f"{service} ({shell}): {out}{err}"
        seen[service] = out
    assert len(set(seen.values())) == 1, seen
    assert "/opt/venv/bin/python" in seen["slurmctld"]


def test_plain_sbatch_from_the_checkout_writes_its_log_there_as_the_owner(
    cluster: Cluster,
) -> None:
    proc = cluster.run("sbatch --parsable --wait --wrap 'echo hello from $(hostname)'")
    job = int(proc.stdout.strip())
    assert cluster.sacct(job)[0] == "COMPLETED"
    log = CHECKOUT / f"slurm-{job}.out"
    assert log.read_text().startswith("hello from node")
    assert (log.stat().st_uid, log.stat().st_gid) == (
        CHECKOUT.stat().st_uid,
        CHECKOUT.stat().st_gid,
    ), "what jobs write into the checkout belongs to its owner on the host"


def test_root_owned_checkout_refuses_output_into_it_before_submitting(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Needs a second cluster, on a checkout that root owns (as CI's clone is); `make clean`
    then removes it, and the test asserts that nothing of it is left."""
    if os.geteuid() != 0:
        pytest.skip("creating a root-owned checkout needs root")
    project = f"{cluster.project}-root"
    root_checkout = copy_checkout(tmp_path / "checkout", 0)
    root = Cluster(project, checkout=root_checkout)
    try:
        # One node is enough to submit.
        up = make("up", "NODES=1", checkout=root_checkout, project=project)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        refused = root.run("sbatch --wrap 'echo hi'", check=False)
        assert refused.returncode != 0
        assert f"{MOUNT}, which {JOB_USER} cannot write" in refused.stderr, refused.stderr
        assert "--output=" in refused.stderr and "clone the project" in refused.stderr
        assert root.login("sacct -X -n -P -o JobID -S now-1hours").strip() == "", "nothing queued"
        # The fix it names works.
        job = int(
            root.login(
                f"sbatch --parsable --wait --output={SHARED}/logs/%x-%j.out --wrap 'echo fixed'"
            )
        )
        assert root.sacct(job)[0] == "COMPLETED"
        assert root.login(f"cat {SHARED}/logs/wrap-{job}.out").strip() == "fixed"
    finally:
        # make clean on a checkout: nothing of that cluster is left, its state and secrets gone
        # together (controller state and accounting must never disagree).
        assert make("clean", checkout=root_checkout, project=project).returncode == 0
        label = f"label=com.docker.compose.project={project}"
        for kind in ("container", "volume"):
            left = subprocess.run(
                ["docker", kind, "ls", "-aq" if kind == "container" else "-q", "--filter", label],
                capture_output=True,
                text=True,
                check=True,
            )
            assert left.stdout.split() == [], f"make clean left {kind}s: {left.stdout}"
        assert not root.shared_host_dir.exists(), "make clean removes the shared files"


@pytest.mark.parametrize(
    ("export", "script", "expected"),
    [
        # ALL plus one variable: the submit environment (SLURMLAB_SHARED) and X.
        ("--export=ALL,X=42", "echo X=$X S=$SLURMLAB_SHARED", "X=42 S={shared}"),
        # A list without ALL: those variables and the user's login environment.
        ("--export=X=7", "echo X=$X S=$SLURMLAB_SHARED P=$(command -v python)",
         "X=7 S={shared} P=/opt/venv/bin/python"),
        # NONE: only the login environment (no SUBMIT_ONLY from the submit shell).
        ("--export=NONE", "echo SUBMIT_ONLY=${SUBMIT_ONLY:-unset} P=$(command -v python) H=$HOME",
         f"SUBMIT_ONLY=unset P=/opt/venv/bin/python H=/home/{JOB_USER}"),
        ("--get-user-env", "echo SUBMIT_ONLY=$SUBMIT_ONLY P=$(command -v python)",
         "SUBMIT_ONLY=yes P=/opt/venv/bin/python"),
    ],
    ids=["all-plus-list", "list", "none", "get-user-env"],
)  # fmt: skip
def test_every_export_form_gives_its_environment_and_keeps_nodes_up(
    cluster: Cluster, export: str, script: str, expected: str
) -> None:
    restarts_before = slurmd_restarts(cluster)
    out = cluster.tmp_path("export") + ".out"
    job = cluster.login(
        f"SUBMIT_ONLY=yes sbatch --parsable --wait -N1 -o {out} {export} "
        f"--wrap {shlex.quote(script)}"
    ).strip()
    assert cluster.sacct(int(job))[0] == "COMPLETED"
    assert cluster.login(f"cat {out}").strip() == expected.format(shared=SHARED)
    assert set(nodes_up(cluster).values()) <= {"idle", "mix", "alloc"}, nodes_up(cluster)
    assert slurmd_restarts(cluster) == restarts_before, "no node daemon may have died"


def slurmd_restarts(cluster: Cluster) -> dict[str, str]:
    ids = {n: cluster.container_id(n) for n in NODES}
    return {
        n: subprocess.run(
            ["docker", "inspect", "-f", "{{.RestartCount}}", cid],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for n, cid in ids.items()
    }


def test_accounting_reports_a_steps_real_memory_and_cpu(cluster: Cluster) -> None:
    """A step that holds 300 MiB and spins for 25 s of CPU: sstat while it runs, sacct and seff
    after."""
    # Spins until it has used 25 s of CPU (not of wall time: the host's cores are shared).
    hold = (
        "import time; b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); "
        "t = time.time()\nwhile time.process_time() < 25 and time.time() - t < 120: pass"
    )
    step = f"srun python -c {shlex.quote(hold)}"
    job = int(cluster.login(f"sbatch --parsable -N1 -o /dev/null --wrap {shlex.quote(step)}"))
    live: list[str] = []

    def sstat_reports() -> bool:
        out = cluster.run(f"sstat -n -P -j {job}.0 -o MaxRSS,AveCPU", check=False).stdout
        live.append(out.strip())
        return bool(re.match(r"\d+K\|\d", out.strip()))

    cluster.wait_for(f"sstat to report job {job}'s running step", sstat_reports, 60)
    assert cluster.wait_done(job)[0] == "COMPLETED"
    row = cluster.login(f"sacct -n -P -j {job}.0 -o MaxRSS,AveRSS,AveCPU,TRESUsageInMax").strip()
    max_rss, ave_rss, ave_cpu, tres_max = row.split("|")
    mib = int(max_rss.rstrip("K")) / 1024
    assert 300 * 0.8 <= mib <= 300 * 1.2, f"MaxRSS {max_rss} for a 300 MiB step"
    assert ave_rss.endswith("K") and int(ave_rss.rstrip("K")) > 0
    minutes, seconds = ave_cpu.split(":")[-2:]
    assert 15 <= int(minutes) * 60 + float(seconds) <= 40, f"AveCPU {ave_cpu} for 25 s of CPU"
    assert "mem=" in tres_max and "cpu=" in tres_max, tres_max
    seff = cluster.login(f"seff {job}")
    used = re.search(r"Memory Utilized: ([0-9.]+) MB", seff)
    assert used and 240 <= float(used.group(1)) <= 360, seff
    assert "State: COMPLETED" in seff and re.search(r"CPU Efficiency: [0-9.]+%", seff), seff


def test_requeued_job_runs_again_within_seconds(cluster: Cluster) -> None:
    """The bound here only ends the test; make bench-cluster measures requeue -> RUNNING."""
    job = cluster.submit("-N1 -o /dev/null --wrap 'sleep 300'")
    cluster.wait_for("the job to run", lambda: cluster.queued_state(job) == "RUNNING", 60)
    cluster.login(f"scontrol requeue {job}")
    cluster.wait_for(
        "the requeued job to run again",
        lambda: (
            cluster.login(f"sacct -X -n -P -j {job} -o Restarts").strip() == "1"
            and cluster.queued_state(job) == "RUNNING"
        ),
        60,
    )
    cluster.login(f"scancel {job}")


def node_address(cluster: Cluster, node: str) -> str:
    return container_address(cluster.container_id(node))


def container_address(cid: str) -> str:
    return subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            cid,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_nodes_restarted_on_new_addresses_run_their_own_tasks(cluster: Cluster) -> None:
    """Docker hands a restarted container whatever address is free: stop two nodes, let other
    containers take one of their addresses, start them again; every task must still run on the
    node Slurm says it runs on (a stale address sends it to a neighbour).

    Docker gives a new container the lowest free address of the network, and earlier tests may
    have left lower ones free (removed nodes), so containers are started until one has taken a
    stopped node's address."""
    before = {n: node_address(cluster, n) for n in ["node1", "node2"]}
    network = f"{cluster.project}_default"
    cluster.dc("stop", "-t", "2", "node1", "node2")
    thieves: list[str] = []
    try:
        while not any(container_address(t) in before.values() for t in thieves[-1:]):
            assert len(thieves) < 32, f"no container took an address of {before}"
            thieves.append(subprocess.run(
                ["docker", "run", "-d", "--rm", "--network", network, "--entrypoint", "sleep",
                 cluster.compose_env["SLURMLAB_SLURM_IMAGE"], "600"],
                capture_output=True, text=True, check=True,
            ).stdout.strip())  # fmt: skip
        cluster.dc("start", "node2")
        cluster.dc("start", "node1")
        after = {n: node_address(cluster, n) for n in ["node1", "node2"]}
        assert after != before, f"the addresses did not move ({before}); the test proves nothing"
        # Restarted nodes rejoin drained until the controller owes them nothing
        # (images/runtime/entrypoint.sh, hold_rejoining_node).
        cluster.wait_for(
            "all four nodes idle again",
            lambda: set(nodes_up(cluster).values()) == {"idle"} and len(nodes_up(cluster)) == 4,
            240,
        )
        for node in ("node1", "node2"):  # rejoined drained, resumed once nothing was owed
            log = subprocess.run(
                ["docker", "logs", cluster.container_id(node)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert re.search(rf"{node} resumed \d+ s after its restart: the controller owes it "
                             "nothing", log.stdout), log.stdout[-2000:]  # fmt: skip
        out = cluster.tmp_path("where") + ".out"
        job, rc = cluster.sbatch(
            f"-N4 -o {out}", "srun bash -c 'echo $(hostname) $SLURMD_NODENAME'"
        )
        assert rc == 0 and cluster.sacct(job)[0] == "COMPLETED"
        pairs = [line.split() for line in cluster.login(f"cat {out}").splitlines()]
        assert sorted(p[1] for p in pairs) == NODES
        assert all(host == slurm_name for host, slurm_name in pairs), pairs
    finally:
        subprocess.run(["docker", "rm", "-f", *thieves], capture_output=True)


def test_shared_root_setting_moves_every_default_path(cluster: Cluster) -> None:
    """The job file and jobs/submit.py with SLURMLAB_SHARED pointed at another shared directory
    (here one in the checkout, which every node mounts) write nothing under the usual root."""
    other = f"{MOUNT}/.test-shared-root"
    marker = cluster.tmp_path("marker")
    cluster.run(f"rm -rf {other} && mkdir -p {other} && touch {marker} && sleep 1")
    config = "jobs/configs/simple_cnn_synthetic.yaml"
    # Where things go is what is tested: the smallest run that writes every kind of file.
    tiny = "epochs=1 max_steps_per_epoch=2 synthetic_train=256 synthetic_val=64 batch_size=32"
    tiny += " plot=false"
    env = f"SLURMLAB_SHARED={other} CONFIG={config}"
    job = cluster.login(
        f"{env} sbatch --parsable --wait --nodes=2 -o {other}/%j.out jobs/train_ddp.sbatch {tiny}"
    ).strip()
    assert cluster.sacct(int(job))[0] == "COMPLETED"
    out = cluster.login(
        f"SLURMLAB_SHARED={other} python jobs/submit.py --nodes 2 --timeout-min 20 "
        f"--config {config} {tiny}",
        timeout=900,
    )
    submitit_job = re.search(r"job (\d+): 2 ranks returned, COMPLETED", out)
    assert submitit_job, out
    files = set(cluster.login(f"cd {other} && find . -maxdepth 3").split())
    for path in [
        f"./runs/{job}/metrics.jsonl",
        f"./runs/{submitit_job.group(1)}/checkpoints",
        f"./submitit/{submitit_job.group(1)}",
        "./data/synthetic",
    ]:
        assert path in files, (path, sorted(files))
    newer = cluster.login(f"find {SHARED} -newer {marker} -not -path '{SHARED}/tests*'").split()
    assert newer == [], f"written under {SHARED} although SLURMLAB_SHARED={other}: {newer}"
    cluster.run(f"rm -rf {other}")


def test_make_train_prints_results_readable_on_the_host(cluster: Cluster) -> None:
    proc = make("train", "ARGS=epochs=1", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    paths = dict(
        re.findall(r"^\s+(curves|metrics|rank-0 log|checkpoint):\s+(\S+)$", proc.stdout, re.M)
    )
    assert set(paths) == {"curves", "metrics", "rank-0 log", "checkpoint"}, proc.stdout[-2000:]
    for what, path in paths.items():
        host = Path(path)
        assert host.is_absolute() and host.is_file(), (what, path)
        assert host.is_relative_to(cluster.shared_host_dir), (what, path)
    assert Path(paths["curves"]).read_bytes().startswith(b"\x89PNG")
    assert '"val_acc"' in Path(paths["metrics"]).read_text()
    assert "Final: epoch=" in Path(paths["rank-0 log"]).read_text()
