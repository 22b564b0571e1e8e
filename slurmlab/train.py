"""`make train` and `make submit` in slurmlab's own checkout: check the trainer config, submit a job
file as the job user from the login node, follow it to its end, say where its results are.

    python3 -m slurmlab.train [--project DIR --name NAME] [--job FILE] [--config FILE]
                              [--whole-cluster] [key=value ...]

--whole-cluster (make train): one rank per GPU on every node of the cluster, whatever its shape;
otherwise (make submit) the job file's own #SBATCH lines decide. The job is followed on the login
node by scripts/follow-job.sh, which uses plain Slurm commands and works on any cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from slurmlab import docker, facts
from slurmlab.cli import STYLE_VARIABLE
from slurmlab.cluster import Cluster
from slurmlab.config import Style
from slurmlab.errors import SlurmlabError
from slurmlab.project import open_project

DEFAULT_JOB = "jobs/train_ddp.sbatch"
GPU_CONFIG = "jobs/configs/resnet50_cifar10.yaml"  # ResNet50 on CIFAR-10: a GPU workload
CPU_CONFIG = "jobs/configs/simple_cnn_synthetic.yaml"  # what emulated GPUs train instead


def on_login(cluster: Cluster, command: Sequence[str], capture: bool = False) -> tuple[int, str]:
    """A command in a login shell on the login node as the job user, from the checkout."""
    args = docker.exec_args(
        cluster.login_node(),
        ["bash", "-lc", 'exec "$@"', "slurmlab-train", *command],
        user=facts.JOB_USER,
        workdir=cluster.project.mount,
    )
    proc = docker.run(args, capture_output=capture)
    return proc.returncode, proc.stdout or ""


def submit(
    cluster: Cluster, job_file: str, config: str | None, whole: bool, args: list[str]
) -> int:
    project = cluster.project
    if not (project.dir / job_file).is_file():
        raise SlurmlabError(f"job file {job_file} not found (JOB=jobs/<name>.sbatch)")
    shape = cluster.current_shape()
    if config is None:
        config = GPU_CONFIG if shape.gpu_mode == "nvidia" else CPU_CONFIG
        if shape.gpu_mode != "nvidia":
            print(
                f"== emulated GPUs: training the CPU demo ({config}); pass CONFIG=... for another"
            )
    if not (project.dir / config).is_file():
        raise SlurmlabError(f"config {config} not found (CONFIG=jobs/configs/<name>.yaml)")
    layout = []
    if whole:  # N nodes, one task per GPU: the layout of jobs/train_ddp.sbatch (--gpus-per-task=1)
        layout = [f"--nodes={shape.nodes}", f"--ntasks-per-node={shape.gpus_per_node}"]

    # A bad config or override is refused here, before anything is submitted.
    status, _ = on_login(cluster, ["python", "-m", "trainer", "--config", config, "--check", *args])
    if status != 0:
        return status
    # The log goes to the shared filesystem, not the checkout: a root-owned checkout (CI, a root
    # shell on a GPU box) is not writable by the job user, and the host can read it there.
    shared = facts.shared_root()
    status, out = on_login(
        cluster,
        ["env", f"CONFIG={config}", "sbatch", "--parsable", f"--output={shared}/logs/%x-%j.out",
         *layout, job_file, *args],
        capture=True,
    )  # fmt: skip
    if status != 0:
        return status
    job = out.strip().split(";")[0]
    print(f"== submitted job {job}: {' '.join([job_file, *layout])} with {config} {' '.join(args)}")
    stdout = ""
    for word in cluster.controller().run("scontrol", "show", "job", job).split():
        if word.startswith("StdOut="):
            stdout = word.removeprefix("StdOut=")
    status, _ = on_login(cluster, ["scripts/follow-job.sh", job])
    if status != 0:
        print(
            f"error: job {job} did not complete; its log is above ({cluster.style.logs(job)})",
            file=sys.stderr,
        )
        return status
    host = project.shared_host_dir  # the same files on the host
    run_dir = host / "runs" / job
    log = host / Path(stdout).relative_to(shared)
    final = [line for line in log.read_text().splitlines() if line.startswith("Final")]
    print(final[-1] if final else "(no Final line in the log)")
    checkpoints = sorted((run_dir / "checkpoints").glob("*.pt"))
    print(f"== results of job {job}, on this host:")
    print(f"   curves:      {run_dir / 'curves.png'}")
    print(f"   metrics:     {run_dir / 'metrics.jsonl'}")
    print(f"   rank-0 log:  {log}")
    print(f"   checkpoint:  {checkpoints[-1] if checkpoints else '(none)'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m slurmlab.train", description=__doc__)
    parser.add_argument("--project", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--job", default=DEFAULT_JOB)
    parser.add_argument("--config")
    parser.add_argument("--whole-cluster", action="store_true")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value")
    args = parser.parse_args(argv)
    style = Style(make=os.environ.get(STYLE_VARIABLE) == "make")
    try:
        project = open_project(Path.cwd(), args.project, None, args.name)
        cluster = Cluster(project, style)
        overrides = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
        return submit(cluster, args.job, args.config or None, args.whole_cluster, overrides)
    except SlurmlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
