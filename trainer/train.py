"""The run, as a story: topology -> build -> resume -> fit -> finish. ``run(cfg) -> dict``.

Works unchanged for a single process, torchrun, srun (one task per GPU) and submitit, on CUDA
(NCCL, bf16 autocast, channels_last) or CPU (gloo, fp32). See trainer/README.md. Each chapter
lives in its own module:

* who this rank is: trainer/topology.py; the process group and collectives: trainer/distributed.py
* building everything from the config: trainer/build.py (:class:`~trainer.build.Training`)
* checkpoints of the run's state, and resuming: trainer/run_state.py
* the step, the epoch loop and validation: trainer/loop.py
* the header, metrics records and the result: trainer/report.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from trainer.build import (
    build_optimizer,
    build_scheduler,
    build_training,
    effective_lr,
    lr_factor,
)
from trainer.config import Config, resolve_paths, signal_from_name
from trainer.distributed import (
    SetupError,
    cleanup_distributed,
    in_process_group,
    init_distributed,
    select_device,
)
from trainer.loop import evaluate, fit, train_step
from trainer.preemption import EXIT_PREEMPTED, PreemptionFlag
from trainer.report import finish, log_start, setup_logging
from trainer.run_state import resume
from trainer.topology import Topology, topology_from_env, validate_topology

__all__ = [
    "EXIT_PREEMPTED",
    "SetupError",
    "build_optimizer",
    "build_scheduler",
    "effective_lr",
    "evaluate",
    "lr_factor",
    "run",
    "train_step",
]


def run(cfg: Config | Mapping[str, Any], handle_signals: bool = True) -> dict[str, Any]:
    """Train according to ``cfg`` in this process (one rank). Returns the result dict.

    ``handle_signals=False`` leaves the preemption signal alone, for a caller that handles it
    itself; periodic checkpoints still happen.
    """
    cfg = resolve_paths(cfg if isinstance(cfg, Config) else Config.from_dict(cfg))
    topo = topology_from_env()
    validate_topology(topo)
    setup_logging(topo.rank)
    device = select_device(topo)
    _set_cpu_threads(cfg, topo, device)
    flag = _preemption_flag(cfg, device)
    if handle_signals:
        flag.install()
    try:
        backend = init_distributed(topo, device, cfg.backend, cfg.dist_timeout_s)
        started = time.time()
        t = build_training(cfg, topo, device, backend)
        state, resumed_from = resume(t)
        metrics = log_start(t, state, flag, resumed_from)
        preempted = fit(t, state, flag, metrics)
        result = finish(
            t, state, metrics, preempted=preempted, started=started, resumed_from=resumed_from
        )
        if in_process_group():
            # Leave together: a rank that exits first (e.g. 75 after a preemption) would make
            # `srun --kill-on-bad-exit` kill rank 0 while it still writes the plot and summary.
            dist.barrier()
        return result
    finally:
        flag.uninstall()
        cleanup_distributed()


def _preemption_flag(cfg: Config, device: torch.device) -> PreemptionFlag:
    """The flag the loop polls; checked every step on CPU, every 20 steps on CUDA (a sync)."""
    check_every = cfg.signal_check_every or (20 if device.type == "cuda" else 1)
    signum = None if cfg.preempt_signal.lower() == "none" else signal_from_name(cfg.preempt_signal)
    return PreemptionFlag(signum, check_every, device)


def _set_cpu_threads(cfg: Config, topo: Topology, device: torch.device) -> None:
    """Intra-op threads: the config, else Slurm's CPUs for this task, else cores / local ranks."""
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
        return
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    on_node = os.environ.get("SLURM_CPUS_ON_NODE", "")
    if per_task.isdigit():
        torch.set_num_threads(int(per_task))
    elif on_node.isdigit():
        torch.set_num_threads(max(1, int(on_node) // topo.local_world_size))
    else:
        avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (avail or 1) // topo.local_world_size))
