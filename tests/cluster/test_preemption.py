"""Real preemption (slurm.conf: preempt/partition_prio, PreemptMode=REQUEUE, GraceTime): a job in
the `urgent` partition takes the nodes of a running training job in `gpu`. The victim gets its
--signal from Slurm, checkpoints, is requeued and resumes from that checkpoint once the urgent
job is done; for sbatch job files and for submitit."""

from __future__ import annotations

import re

from conftest import DEMO_CONFIG, Cluster, submit_training, training_log


def started_and_ended(cluster: Cluster, job: int | str) -> tuple[str, str]:
    """Start and End of the job's last run (ISO times sort as strings)."""
    start, end = cluster.login(f"sacct -X -n -P -j {job} -o Start,End").strip().split("|")
    return start, end


def test_urgent_job_preempts_a_training_job_which_resumes_from_its_checkpoint(
    cluster: Cluster,
) -> None:
    # all four nodes (the job file's default): the urgent job can only run by preempting it
    victim = submit_training(cluster, trainer_args="epochs=2 checkpoint_every_steps=10")
    log_path = training_log(victim)
    cluster.wait_log(log_path, r"Epoch: 0, Batch: 10,")

    # As in README.md. It needs a GPU, which the victim holds on every node (a node's second
    # core is free: a CPU-only job would run beside the victim without preempting it).
    urgent = cluster.submit("-p urgent -N1 --gpus-per-node=1 --wrap 'srun hostname'")

    assert cluster.wait_done(urgent) == ["COMPLETED", "1", "0:0"]
    assert cluster.wait_done(victim) == ["COMPLETED", "4", "0:0"]
    assert started_and_ended(cluster, urgent)[1] <= started_and_ended(cluster, victim)[0], (
        "the urgent job must finish before the victim runs again"
    )
    log = cluster.login(f"cat {log_path}")
    stopped = re.search(r"Preemption signal received: stopped at .*\(step (\d+)\)", log)
    assert stopped, log[-3000:]
    assert f"Preempted: Slurm is preempting job {victim} and requeues it" in log, log[-3000:]
    resumed = re.search(r"Resumed from \S+ \(epoch \d+, batch \d+, step (\d+)\)", log)
    assert resumed, log[-3000:]
    assert resumed.group(1) == stopped.group(1), "resumed at the step the signal stopped it"
    assert "Final: epoch=2 " in log
    assert cluster.login(f"sacct -X -n -P -j {victim} -o Restarts").strip() == "1"


def test_urgent_job_preempts_a_submitit_job_which_resumes_and_finishes(cluster: Cluster) -> None:
    out = cluster.login(
        f"python tests/cluster/submitit_preempt.py --config {DEMO_CONFIG} --nodes 4 --by urgent",
        timeout=900,
    )
    urgent = re.search(r"^urgent job (\d+)$", out, re.M)
    victim = re.search(r"^victim job (\d+)$", out, re.M)
    assert urgent and victim, out
    result = dict(re.findall(r"^result (\w+)=(.*)$", out, re.M))
    assert result["status"] == "completed", out
    assert result["resumed_from"] not in {"None", ""}, out
    assert result["epochs_completed"] == result["epochs"], out
    assert cluster.sacct(int(urgent.group(1)))[0] == "COMPLETED"
    assert cluster.sacct(int(victim.group(1)))[0] == "COMPLETED"
    stopped = re.search(r"Preemption signal received: stopped at .*\(step (\d+)\)", out)
    resumed = re.search(r"Resumed from \S+ \(epoch \d+, batch \d+, step (\d+)\)", out)
    assert stopped and resumed and stopped.group(1) == resumed.group(1), out
    restarts = cluster.login(f"sacct -X -n -P -j {victim.group(1)} -o Restarts").strip()
    assert restarts == "1", "requeued once, by Slurm"
    assert (
        started_and_ended(cluster, urgent.group(1))[1]
        <= started_and_ended(cluster, victim.group(1))[0]
    )
