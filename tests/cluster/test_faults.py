"""Faults on the running cluster: each test breaks a real part and asserts what survives."""

from __future__ import annotations

import re

from conftest import Cluster, make

CONFIG = "jobs/configs/simple_cnn_synthetic.yaml"
ENV = f"CONFIG={CONFIG}"


def log_path(job: int) -> str:
    return f"/shared/tests/logs/{job}.out"


def submit_training(cluster: Cluster, sbatch_args: str = "", trainer_args: str = "") -> int:
    return cluster.submit(
        f"--output=/shared/tests/logs/%j.out {sbatch_args} jobs/train_ddp.sbatch {trainer_args}",
        env=ENV,
    )


def controller_answers(cluster: Cluster) -> bool:
    return cluster.run("scontrol ping", check=False).stdout.count("is UP") == 1


def test_controller_restart_mid_job_loses_nothing(cluster: Cluster) -> None:
    job = submit_training(cluster, trainer_args="epochs=2")
    waiting = cluster.submit("--hold -N1 --wrap hostname")  # queued work must survive too
    cluster.wait_log(log_path(job), r"Epoch: 0, Batch: 10,")

    cluster.dc("restart", "slurmctld")
    cluster.wait_for("the controller to answer again", lambda: controller_answers(cluster), 120)

    assert cluster.queued_state(waiting) == "PENDING"
    assert cluster.wait_done(job) == ["COMPLETED", "4", "0:0"]
    log = cluster.login(f"cat {log_path(job)}")
    assert "restart 1" not in log, "the job must not have been requeued"
    assert "Final: epoch=2 " in log
    cluster.login(f"scancel {waiting}")


def test_preemption_signal_checkpoints_requeues_and_resumes(cluster: Cluster) -> None:
    job = submit_training(cluster, "--nodes=2", "epochs=3 checkpoint_every_steps=10")
    cluster.wait_log(log_path(job), r"Epoch: 0, Batch: 20,")
    # What Slurm does before a time limit or a preemption (--signal=USR2@...): USR2 to every rank.
    cluster.login(f"scancel --signal=USR2 {job}")

    assert cluster.wait_done(job) == ["COMPLETED", "2", "0:0"]
    log = cluster.login(f"cat {log_path(job)}")
    assert "Preemption signal received" in log
    assert f"job {job} (restart 1)" in log, "the job must have been requeued under its own id"
    resumed = re.search(r"Resumed from \S+ \(epoch (\d+), batch (\d+), step (\d+)\)", log)
    assert resumed, log[-3000:]
    assert int(resumed.group(3)) >= 20, "resumed from the checkpoint written at the signal"
    assert "Final: epoch=3 " in log
    restarts = cluster.login(f"sacct -X -n -P -j {job} -o Restarts").strip()
    assert restarts == "1"


def test_requeue_cap_stops_with_a_clear_message(cluster: Cluster) -> None:
    job = submit_training(cluster, "--nodes=2", "epochs=3 max_requeues=0")
    cluster.wait_log(log_path(job), r"Epoch: 0, Batch: 10,")
    cluster.login(f"scancel --signal=USR2 {job}")

    state, _, exit_code = cluster.wait_done(job)
    log = cluster.login(f"cat {log_path(job)}")
    assert (state, exit_code) == ("FAILED", "75:0"), log[-2000:]
    assert re.search(r"max_requeues", log), log[-2000:]
    assert "Checkpoint saved: " in log


def test_node_loss_requeues_and_resumes_from_the_last_checkpoint(cluster: Cluster) -> None:
    job = submit_training(cluster, trainer_args="epochs=3 checkpoint_every_steps=5")
    cluster.wait_log(log_path(job), r"Checkpoint saved: .*ckpt_s0*(1[0-9]|[2-9][0-9])_")
    cluster.dc("stop", "-t", "2", "node3")
    try:
        cluster.wait_for(
            f"job {job} to be requeued after node3 was lost",
            lambda: (
                cluster.login(f"sacct -X -n -P -j {job} -o Restarts").strip() == "1"
                or "restart 1" in cluster.login(f"cat {log_path(job)}")
            ),
            180,
        )
    finally:
        cluster.dc("start", "node3")
    assert cluster.wait_done(job, timeout=900) == ["COMPLETED", "4", "0:0"]
    log = cluster.login(f"cat {log_path(job)}")
    saved = [
        int(s)
        for s in re.findall(r"Checkpoint saved: \S+ckpt_s(\d+)_", log.split("(restart 1)")[0])
    ]
    resumed = re.search(r"Resumed from \S+ckpt_s(\d+)_", log)
    assert resumed, log[-3000:]
    assert int(resumed.group(1)) == max(saved), "resume from the newest checkpoint before the loss"
    assert "Final: epoch=3 " in log
    # The requeued run needed all four nodes, so node3 came back; it must not stay down/drained.
    states: list[str] = []

    def node3_usable() -> bool:
        states.append(cluster.login("sinfo -h -n node3 -o %t").strip())
        return states[-1] in {"idle", "mix", "alloc", "comp"}

    try:
        cluster.wait_for("node3 to be usable again", node3_usable, 120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; node3 states seen: {sorted(set(states))}") from exc


def test_accounting_outage_loses_no_job_record(cluster: Cluster) -> None:
    cluster.dc("stop", "slurmdbd")
    try:
        jobs = [cluster.sbatch("-N1 -o /dev/null", f"echo outage {i}")[0] for i in range(3)]
    finally:
        cluster.dc("start", "slurmdbd")
    cluster.wait_for(
        "the 3 jobs' records once slurmdbd is back",
        lambda: (
            cluster.run(
                f"sacct -X -n -P -j {','.join(map(str, jobs))} -o State", check=False
            ).stdout.split()
            == ["COMPLETED"] * 3
        ),
        180,
    )


def test_full_restart_keeps_history_data_and_job_ids(cluster: Cluster) -> None:
    before = cluster.sbatch("-N1 -o /dev/null", "echo before restart")[0]
    cluster.run("echo kept > /shared/tests/restart-marker")
    assert make("down").returncode == 0
    proc = make("up")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    assert cluster.sacct(before)[0] == "COMPLETED", "accounting history survives"
    assert cluster.login("cat /shared/tests/restart-marker").strip() == "kept"
    after = cluster.sbatch("-N1 -o /dev/null", "echo after restart")[0]
    assert after > before, "job ids continue after a restart"
