"""The cluster itself: daemons, nodes, GRES, accounting, secrets, users."""

from __future__ import annotations

import hashlib
import re
import subprocess
import tarfile

import pytest
from conftest import Cluster, make, slurmlab

from slurmlab import docker


def compose_nodes(cluster: Cluster) -> list[str]:
    """The node services that run (node1..node4 in the default shape)."""
    services = cluster.dc("ps", "--services", "--filter", "status=running").stdout.split()
    return sorted(s for s in services if re.fullmatch(r"node\d+", s))


def test_cluster_comes_up_with_every_node_idle_and_one_gpu_each(cluster: Cluster) -> None:
    rows = [line.split() for line in cluster.login("sinfo -h -N -o '%N %P %t %G'").splitlines()]
    nodes = sorted({r[0] for r in rows})
    assert nodes == compose_nodes(cluster) == ["node1", "node2", "node3", "node4"]
    for name in nodes:
        partitions = sorted(r[1] for r in rows if r[0] == name)
        assert partitions == ["gpu*", "urgent"], f"{name}: the default gpu and the urgent one"
    for name, _, state, gres in rows:
        assert state == "idle", f"{name} is {state}"
        assert gres.startswith("gpu:1"), f"{name} advertises {gres}"


def test_make_up_on_the_running_cluster_changes_nothing(cluster: Cluster) -> None:
    """It asks Docker whether the cluster runs its shape, images and runtime, and builds,
    starts or restarts nothing (make bench-cluster times it)."""
    before = sorted(c.id for c in docker.containers(cluster.project))
    proc = make("up")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to change" in proc.stdout, proc.stdout
    assert "building" not in proc.stdout and "Recreating" not in proc.stderr
    assert sorted(c.id for c in docker.containers(cluster.project)) == before


def test_hostnames_are_slurm_node_names(cluster: Cluster) -> None:
    for node in compose_nodes(cluster):
        assert cluster.run("hostname", service=node).stdout.strip() == node


def test_srun_reaches_all_four_nodes(cluster: Cluster) -> None:
    assert sorted(cluster.login("srun -N4 hostname").split()) == compose_nodes(cluster)


def test_batch_job_sees_rank_task_count_and_gpu_on_every_node(cluster: Cluster) -> None:
    out = cluster.tmp_path("env") + ".out"
    script = (
        "srun bash -c 'echo host=$(hostname) rank=$SLURM_PROCID"
        " ntasks=$SLURM_NTASKS gpu=$CUDA_VISIBLE_DEVICES'"
    )
    job, rc = cluster.sbatch(f"-N4 --ntasks-per-node=1 --gpus-per-node=1 -o {out}", script)
    assert rc == 0
    lines = sorted(cluster.login(f"cat {out}").splitlines())
    ranks = [dict(kv.split("=", 1) for kv in line.split()) for line in lines]
    assert sorted(int(r["rank"]) for r in ranks) == [0, 1, 2, 3]
    assert {r["ntasks"] for r in ranks} == {"4"}
    assert {r["gpu"] for r in ranks} == {"0"}, "Slurm must bind each task to its node's one GPU"
    assert sorted(r["host"] for r in ranks) == compose_nodes(cluster)

    state, nnodes, exit_code = cluster.sacct(job)
    assert (state, nnodes, exit_code) == ("COMPLETED", "4", "0:0")


def test_failing_job_is_failed_in_accounting_with_its_exit_code(cluster: Cluster) -> None:
    out = cluster.tmp_path("fail") + ".out"
    job, rc = cluster.sbatch(f"-N2 -o {out}", "echo about to fail; exit 3")
    assert rc == 3
    assert cluster.sacct(job) == ["FAILED", "2", "3:0"]
    assert "about to fail" in cluster.login(f"cat {out}")


@pytest.mark.parametrize(
    ("request_args", "reason"),
    [
        ("-N1 --gres=gpu:2", "Requested node configuration is not available"),
        ("-N1 --gpus-per-node=2", "Requested node configuration is not available"),
        # More nodes than the partition has: with EnforcePartLimits (the default site's, as
        # sites set it) Slurm says so in these words.
        ("-N5 --gpus-per-node=1", "Node count specification invalid"),
    ],
)
def test_impossible_gpu_request_is_rejected_with_a_reason(
    cluster: Cluster, request_args: str, reason: str
) -> None:
    proc = cluster.run(f"sbatch {request_args} --wrap hostname", check=False)
    assert proc.returncode != 0
    assert reason in proc.stderr
    assert "Submitted" not in proc.stdout


def test_jobs_run_as_the_unprivileged_job_user(cluster: Cluster) -> None:
    ids = cluster.login("srun -N4 id -un").split()
    assert ids == ["slurmlab"] * 4


def test_munge_key_is_one_per_cluster_0400_and_unreadable_by_jobs(cluster: Cluster) -> None:
    digests = set()
    for service in ["slurmdbd", "slurmctld", *compose_nodes(cluster)]:
        stat = cluster.run("stat -c '%a %U' /etc/munge/munge.key", service=service, user="root")
        assert stat.stdout.split() == ["400", "munge"], service
        key = cluster.run("base64 -w0 /etc/munge/munge.key", service=service, user="root").stdout
        digests.add(hashlib.sha256(key.encode()).hexdigest())
    assert len(digests) == 1, "every container must share the cluster's one munge key"
    denied = cluster.run("srun -N1 cat /etc/munge/munge.key", check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


def test_db_password_is_private_to_the_database_and_slurmdbd(cluster: Cluster) -> None:
    stat = cluster.run("stat -c '%a %U' /run/slurmlab/db/password", service="mariadb", user="root")
    assert stat.stdout.split() == ["400", "root"]
    conf = cluster.run("stat -c '%a %U' /etc/slurm/slurmdbd.conf", service="slurmdbd", user="root")
    assert conf.stdout.split() == ["600", "slurm"]
    # Nodes and the login node never even mount it; the accounting tier never sees the checkout.
    for service in ["slurmctld", "node1"]:
        assert cluster.run(
            "test -e /run/slurmlab/db/password", service=service, user="root", check=False
        ).returncode
    for service in ["mariadb", "slurmdbd"]:
        assert cluster.run(
            "test -e /workspace", service=service, user="root", check=False
        ).returncode


def test_jwt_key_is_one_per_cluster_0400_slurm_and_only_where_tokens_are_checked(
    cluster: Cluster,
) -> None:
    """Through `docker exec` as root: the key is readable by SlurmUser only. slurmctld and
    slurmdbd check tokens; slurmrestd, which faces callers, holds no key at all."""
    keys = set()
    for service in ["slurmctld", "slurmdbd"]:
        stat = cluster.run(
            "stat -c '%a %U %s' /etc/slurmlab/jwt/jwt_hs256.key", service=service, user="root"
        )
        assert stat.stdout.split() == ["400", "slurm", "32"], service
        keys.add(
            cluster.run(
                "base64 -w0 /etc/slurmlab/jwt/jwt_hs256.key", service=service, user="root"
            ).stdout
        )
    assert len(keys) == 1, "slurmctld and slurmdbd check tokens with the same key"
    for service in ["slurmrestd", "node1"]:
        for secret in ("/etc/slurmlab/jwt/jwt_hs256.key", "/etc/munge/munge.key"):
            if service == "node1" and "munge" in secret:
                continue
            found = cluster.run(f"test -e {secret}", service=service, user="root", check=False)
            assert found.returncode == 1, f"{secret} on {service}"
    who = cluster.run("ps -o user= -C slurmrestd", service="slurmrestd", user="root").stdout
    assert who.split() and set(who.split()) == {"slurmrest"}, "neither root nor SlurmUser"


def test_secrets_never_reach_the_logs(cluster: Cluster) -> None:
    """Every container's log since it started (a fresh cluster's, with the secrets' creation:
    tests/cluster/test_projects.py, test_a_fresh_clusters_secrets_are_created_and_never_logged)."""
    password = cluster.run("cat /run/slurmlab/db/password", service="mariadb", user="root").stdout
    key = cluster.run("base64 -w0 /etc/munge/munge.key", service="slurmctld", user="root").stdout
    jwt = cluster.run(
        "base64 -w0 /etc/slurmlab/jwt/jwt_hs256.key", service="slurmctld", user="root"
    ).stdout
    assert len(password.strip()) >= 32 and len(key) > 1000 and len(jwt) == 44
    logs = cluster.dc("logs", "--no-color").stdout
    assert "slurmdbd version" in logs and "slurmctld version" in logs  # the right logs
    assert password.strip() not in logs
    assert key[:64] not in logs
    assert jwt not in logs
    rendered = cluster.run("cat /etc/slurm/slurmdbd.conf", service="slurmdbd", user="root").stdout
    assert password.strip() in rendered, "slurmdbd gets it only through its 0600 config"


def images() -> dict[str, str]:
    """The cluster's images as `slurmlab env` names them: SLURMLAB_SLURM_IMAGE (the accounting
    tier's, and the bottom of the chain) and SLURMLAB_IMAGE (the login node's and the nodes')."""
    proc = slurmlab("env")
    assert proc.returncode == 0, proc.stderr
    found = dict(re.findall(r"^export (SLURMLAB_\w*IMAGE)=(\S+)$", proc.stdout, re.M))
    assert set(found) == {"SLURMLAB_SLURM_IMAGE", "SLURMLAB_IMAGE"}, proc.stdout
    return found


def history(image: str) -> list[str]:
    """The instructions that made the image's layers, newest first."""
    out = subprocess.run(
        ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.splitlines()


def test_no_secret_in_any_image_layer() -> None:
    """Every layer of the Slurm image (not just its final filesystem) holds no key material:
    Debian's munge writes a key on install, removed in the same layer. The layers above it (the
    trainer's stack) come from images/python-layer.Dockerfile alone, requirement files and pip,
    which the history shows; the cluster's own secrets are made at its first start."""
    forbidden = re.compile(
        r"(^|/)(etc/munge/munge\.key|etc/slurm/slurmdbd\.conf|run/slurmlab/db/.*"
        r"|etc/slurmlab/jwt/.*)$"
    )
    slurm_image, image = images()["SLURMLAB_SLURM_IMAGE"], images()["SLURMLAB_IMAGE"]
    save = subprocess.Popen(["docker", "save", slurm_image], stdout=subprocess.PIPE)
    assert save.stdout is not None
    found: list[str] = []
    layers = 0
    with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
        for member in archive:
            if not member.isfile():
                continue
            blob = archive.extractfile(member)
            assert blob is not None
            try:
                with tarfile.open(fileobj=blob, mode="r|") as layer:
                    layers += 1
                    found += [f"{member.name}: {m.name}" for m in layer if forbidden.search(m.name)]
            except tarfile.ReadError:
                continue  # manifest/config JSON, not a layer
    assert save.wait() == 0
    assert layers >= 2, "expected to have scanned the image's layers"
    assert found == []
    below, above = history(slurm_image), history(image)
    assert above[len(above) - len(below) :] == below, "the Slurm image is the chain's bottom"
    new = above[: len(above) - len(below)]
    runs = [step for step in new if "#(nop)" not in step]
    assert runs and all("pip install" in step for step in runs), runs
    kinds = {step.split("#(nop)")[1].split()[0] for step in new if step not in runs}
    assert kinds <= {"ARG", "COPY", "LABEL"}, kinds
    assert "munge.key" not in "".join(below).replace("rm -f /etc/munge/munge.key", "")


def test_only_the_rest_api_is_published_and_only_on_loopback(cluster: Cluster) -> None:
    ids = cluster.dc("ps", "-q").stdout.split()
    assert len(ids) == 8, "mariadb, slurmdbd, slurmctld, slurmrestd and four nodes"
    published = {}
    for cid in ids:
        ports = subprocess.run(
            ["docker", "inspect", "-f",
             '{{index .Config.Labels "com.docker.compose.service"}} '
             "{{json .HostConfig.PortBindings}}", cid],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        service, bindings = ports.split(" ", 1)
        for host_ip in re.findall(r'"HostIp":"([^"]*)"', bindings):
            assert host_ip == "127.0.0.1", (
                f"{service} publishes a port on {host_ip or 'all interfaces'}"
            )
        if re.search(r'"HostPort"', bindings):
            published[service] = re.findall(r'"HostPort":"(\d+)"', bindings)
    port = cluster.compose_env["SLURMLAB_REST_PORT"]
    assert published == {"slurmrestd": [port]}, published


def test_containers_are_not_privileged(cluster: Cluster) -> None:
    for cid in cluster.dc("ps", "-q").stdout.split():
        privileged = subprocess.run(
            ["docker", "inspect", "-f", "{{.HostConfig.Privileged}}", cid],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert privileged == "false", cid
