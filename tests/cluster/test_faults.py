"""Faults on the running cluster: each test breaks a real part and asserts what survives."""

from __future__ import annotations

import re

from conftest import SHARED, Cluster, make, submit_training, training_log


def controller_answers(cluster: Cluster) -> bool:
    return cluster.run("scontrol ping", check=False).stdout.count("is UP") == 1


def test_controller_restart_mid_job_loses_nothing(cluster: Cluster) -> None:
    job = submit_training(cluster, "--nodes=2", "epochs=2")
    waiting = cluster.submit("--hold -N1 --wrap hostname")  # queued work must survive too
    cluster.wait_log(training_log(job), r"Epoch: 0, Batch: 10,")

    cluster.dc("restart", "slurmctld")
    cluster.wait_for("the controller to answer again", lambda: controller_answers(cluster), 120)

    assert cluster.queued_state(waiting) == "PENDING"
    assert cluster.wait_done(job) == ["COMPLETED", "2", "0:0"]
    log = cluster.login(f"cat {training_log(job)}")
    assert "restart 1" not in log, "the job must not have been requeued"
    assert "Final: epoch=2 " in log
    cluster.login(f"scancel {waiting}")


def test_preemption_signal_checkpoints_requeues_and_resumes(cluster: Cluster) -> None:
    job = submit_training(cluster, "--nodes=2", "epochs=2 checkpoint_every_steps=10")
    cluster.wait_log(training_log(job), r"Epoch: 0, Batch: 20,")
    # What Slurm does before a time limit or a preemption (--signal=USR2@...): USR2 to every rank.
    cluster.login(f"scancel --signal=USR2 {job}")

    assert cluster.wait_done(job) == ["COMPLETED", "2", "0:0"]
    log = cluster.login(f"cat {training_log(job)}")
    assert "Preemption signal received" in log
    assert f"job {job} (restart 1)" in log, "the job must have been requeued under its own id"
    resumed = re.search(r"Resumed from \S+ \(epoch (\d+), batch (\d+), step (\d+)\)", log)
    assert resumed, log[-3000:]
    assert int(resumed.group(3)) >= 20, "resumed from the checkpoint written at the signal"
    assert "Final: epoch=2 " in log
    restarts = cluster.login(f"sacct -X -n -P -j {job} -o Restarts").strip()
    assert restarts == "1"


def test_requeue_cap_stops_with_a_clear_message(cluster: Cluster) -> None:
    job = submit_training(cluster, "--nodes=2", "epochs=3 max_requeues=0")
    cluster.wait_log(training_log(job), r"Epoch: 0, Batch: 10,")
    cluster.login(f"scancel --signal=USR2 {job}")

    state, _, exit_code = cluster.wait_done(job)
    log = cluster.login(f"cat {training_log(job)}")
    assert (state, exit_code) == ("FAILED", "75:0"), log[-2000:]
    # The cap's own message (the header also names max_requeues, so that alone proves nothing).
    assert "requeue cap reached (SLURM_RESTART_COUNT=0 >= max_requeues=0)" in log, log[-2000:]
    assert "Checkpoint saved: " in log
    assert "(restart 1)" not in log, "the job must not have run again"


def test_node_loss_requeues_and_resumes_from_the_last_checkpoint(cluster: Cluster) -> None:
    job = submit_training(cluster, trainer_args="epochs=2 checkpoint_every_steps=5")
    cluster.wait_log(training_log(job), r"Checkpoint saved: .*ckpt_s0*(1[0-9]|[2-9][0-9])_")
    cluster.dc("stop", "-t", "2", "node3")
    try:
        cluster.wait_for(
            f"job {job} to be requeued after node3 was lost",
            lambda: (
                cluster.login(f"sacct -X -n -P -j {job} -o Restarts").strip() == "1"
                or "restart 1" in cluster.login(f"cat {training_log(job)}")
            ),
            180,
        )
    finally:
        cluster.dc("start", "node3")
    assert cluster.wait_done(job, timeout=900) == ["COMPLETED", "4", "0:0"]
    log = cluster.login(f"cat {training_log(job)}")
    saved = [
        int(s)
        for s in re.findall(r"Checkpoint saved: \S+ckpt_s(\d+)_", log.split("(restart 1)")[0])
    ]
    resumed = re.search(r"Resumed from \S+ckpt_s(\d+)_", log)
    assert resumed, log[-3000:]
    assert int(resumed.group(1)) == max(saved), "resume from the newest checkpoint before the loss"
    assert "Final: epoch=2 " in log
    # The requeued run needed all four nodes, so node3 came back; it must not stay down/drained.
    states: list[str] = []

    def node3_usable() -> bool:
        states.append(cluster.login("sinfo -h -n node3 -o %t | sort -u").strip())
        return states[-1] in {"idle", "mix", "alloc", "comp"}

    try:
        cluster.wait_for("node3 to be usable again", node3_usable, 120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; node3 states seen: {sorted(set(states))}") from exc


def test_crash_while_writing_a_checkpoint_resumes_from_the_previous_one(cluster: Cluster) -> None:
    run_dir = cluster.tmp_path("ckpt-crash")
    every = 2
    # ResNet50: its ~190 MB checkpoint takes long enough to write that the kill lands mid-save.
    args = (
        f"model=resnet50 dataset=synthetic data_dir={run_dir}/data synthetic_train=256 "
        f"synthetic_val=32 batch_size=8 eval_batch_size=16 epochs=1 log_every=2 "
        f"checkpoint_every_steps={every} output_dir={run_dir} plot=false"
    )
    job = submit_training(cluster, "--nodes=2", args)
    cluster.wait_for(f"job {job} to run", lambda: cluster.queued_state(job) == "RUNNING", 120)
    rank0_node = cluster.login(
        f"scontrol show hostnames $(squeue -h -j {job} -o %N) | head -1"
    ).strip()
    killer = cluster.run(
        f"python3 tests/cluster/kill_during_save.py {run_dir}/checkpoints --timeout 300",
        service=rank0_node,
        check=False,
        timeout=360,
    )
    assert killer.returncode == 0, killer.stdout + killer.stderr
    killed = re.search(
        r"while writing \.(ckpt_s(\d+)_\S+\.pt)\.tmp-\S+ "
        r"\((\d+) bytes; previous: (ckpt_s(\d+)_\S+\.pt)\)",
        killer.stdout,
    )
    assert killed, killer.stdout
    cut_name, cut_step, previous, previous_step = (
        killed.group(1),
        int(killed.group(2)),
        killed.group(4),
        int(killed.group(5)),
    )

    state, _, _ = cluster.wait_done(job)
    assert state == "FAILED", f"rank 0 was killed, the job cannot have succeeded: {state}"
    on_disk = cluster.login(f"ls -a {run_dir}/checkpoints").split()
    assert cut_name not in on_disk, "the interrupted save must never appear under its final name"
    assert any(name.startswith(f".{cut_name}.tmp-") for name in on_disk), on_disk
    assert max(n for n in on_disk if n.startswith("ckpt_")) == previous

    # The same run again: it resumes from the previous checkpoint and finishes.
    again = submit_training(cluster, "--nodes=2", args)
    assert cluster.wait_done(again) == ["COMPLETED", "2", "0:0"]
    log = cluster.login(f"cat {training_log(again)}")
    resumed = re.search(r"Resumed from (\S+) \(epoch \d+, batch \d+, step (\d+)\)", log)
    assert resumed, log[-3000:]
    assert resumed.group(1) == f"{run_dir}/checkpoints/{previous}"
    assert int(resumed.group(2)) == previous_step == cut_step - every, "lost <= one interval"
    assert "Final: epoch=1 " in log


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
    cluster.run(f"echo kept > {SHARED}/tests/restart-marker")
    assert make("down").returncode == 0
    proc = make("up")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    assert cluster.sacct(before)[0] == "COMPLETED", "accounting history survives"
    assert cluster.login(f"cat {SHARED}/tests/restart-marker").strip() == "kept"
    after = cluster.sbatch("-N1 -o /dev/null", "echo after restart")[0]
    assert after > before, "job ids continue after a restart"
