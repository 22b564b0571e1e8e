"""The process group: device choice, rendezvous, backend decision, init / teardown, and the
collective helpers the trainer uses (:func:`on_main`, :func:`all_ok`, :func:`sync_buffers`).

This is the only module that talks to torch.distributed's process group; who each rank is comes
from trainer/topology.py. Ranks publish (hostname, GPU id) in a TCPStore before
``init_process_group``, so that a shared GPU or a missing rank gives a clear error instead of a
hang inside NCCL.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from trainer.topology import Topology, TopologyError, slurm_gpu

log = logging.getLogger("trainer")

__all__ = [
    "SetupError",
    "all_ok",
    "cleanup_distributed",
    "decide_backend",
    "in_process_group",
    "init_distributed",
    "on_main",
    "select_device",
    "sync_buffers",
]


def select_device(topo: Topology) -> torch.device:
    """cuda:(LOCAL_RANK % device_count) when CUDA is usable, else cpu."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        index = topo.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _gpu_identity(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        return str(uuid)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return f"{visible}:{device.index}:{getattr(props, 'pci_bus_id', '')}"


def decide_backend(requested: str, ranks: list[tuple[str, str]]) -> tuple[str, str]:
    """Choose the backend from every rank's (hostname, GPU identity or "").

    NCCL needs a distinct GPU per rank; when any rank has no GPU, or two ranks on one host
    share a GPU, gloo is used (forcing nccl then raises TopologyError instead of hanging).
    """
    if requested == "gloo":
        return "gloo", "backend=gloo set in the config"
    no_gpu = [r for r, (_, gpu) in enumerate(ranks) if not gpu]
    seen: dict[tuple[str, str], int] = {}
    shared: list[str] = []
    for r, key in enumerate(ranks):
        if key[1] and key in seen:
            shared.append(f"ranks {seen[key]} and {r} on host {key[0]} share one GPU")
        seen.setdefault(key, r)
    if no_gpu:
        why = f"no CUDA device visible to rank(s) {no_gpu[:8]}{'...' if len(no_gpu) > 8 else ''}"
    elif shared:
        why = (
            shared[0]
            + (f" (+{len(shared) - 1} more)" if len(shared) > 1 else "")
            + "; NCCL needs one GPU per rank"
        )
    else:
        return "nccl", "every rank has its own GPU" + (
            " (backend=nccl set in the config)" if requested == "nccl" else ""
        )
    if requested == "nccl":
        raise TopologyError(f"backend=nccl was requested but {why}; use backend=gloo or auto")
    return "gloo", why


def _wait_keys(store: dist.Store, keys: list[str], timeout: _dt.timedelta, what: str) -> None:
    try:
        store.wait(keys, timeout)
    except Exception as exc:
        missing = [k for k in keys if not store.check([k])]
        raise TopologyError(
            f"timed out after {timeout.total_seconds():.0f}s waiting for {what}: missing "
            f"{missing[:16]} ({exc.__class__.__name__}). Did every rank start? Check that the "
            "world size matches the number of launched processes and that MASTER_ADDR/"
            "MASTER_PORT are reachable."
        ) from exc


def _open_store(topo: Topology, timeout: _dt.timedelta) -> dist.Store:
    """The job's TCPStore at MASTER_ADDR:MASTER_PORT (under torchrun, its agent's store), with
    keys of this restart attempt only."""
    use_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    try:
        base = dist.TCPStore(
            topo.master_addr,
            topo.master_port,
            topo.world_size,
            is_master=topo.is_main and not use_agent_store,
            timeout=timeout,
            wait_for_workers=False,
        )
    except Exception as exc:
        raise TopologyError(
            f"rank {topo.rank}: cannot reach the rendezvous store at "
            f"{topo.master_addr}:{topo.master_port} ({exc}). Is the port free and the master "
            "host reachable from every node?"
        ) from exc
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"slurmlab/{attempt}/", base)


def _publish_backend(
    store: dist.Store, topo: Topology, requested_backend: str, timeout: _dt.timedelta
) -> None:
    """Rank 0: wait for every rank's placement, log it, decide the backend and publish the
    decision (or the error, so that every rank raises it instead of waiting)."""
    keys = [f"rank/{r}" for r in range(topo.world_size)]
    _wait_keys(store, keys, timeout, "all ranks to join")
    published = [store.get(k).decode().split("|", 2) for k in keys]
    log.info(
        "Rank placement: %s",
        " ".join(f"rank{r}={host}/gpu{gpu}" for r, (gpu, host, _) in enumerate(published)),
    )
    ranks = [(host, identity) for _, host, identity in published]
    try:
        backend, reason = decide_backend(requested_backend, ranks)  # type: ignore[arg-type]
        store.set("backend", f"ok|{backend}|{reason}")
    except TopologyError as exc:
        store.set("backend", f"error|{exc}")
        raise
    per_host: dict[str, int] = {}
    for host, _ in ranks:
        per_host[host] = per_host.get(host, 0) + 1
    if any(n != topo.local_world_size for n in per_host.values()) and len(per_host) > 1:
        log.warning(
            "ranks per host %s differ from local_world_size=%d", per_host, topo.local_world_size
        )


def init_distributed(
    topo: Topology, device: torch.device, requested_backend: str, timeout_s: float
) -> str:
    """Rendezvous, agree on a backend, init the default process group, barrier.

    Returns the backend name ("none" for a single process). Ranks publish (hostname, GPU id)
    in a TCPStore first so that a shared GPU or a missing rank gives a clear error instead of
    a hang inside NCCL.
    """
    if not topo.is_distributed:
        if requested_backend == "nccl" and device.type != "cuda":
            raise TopologyError("backend=nccl was requested but no CUDA device is visible")
        return "none"
    timeout = _dt.timedelta(seconds=timeout_s)
    store = _open_store(topo, timeout)
    store.set(
        f"rank/{topo.rank}", f"{slurm_gpu(topo)}|{socket.gethostname()}|{_gpu_identity(device)}"
    )
    if topo.is_main:
        _publish_backend(store, topo, requested_backend, timeout)
    else:
        _wait_keys(store, ["backend"], timeout, "rank 0's backend decision")
    status, *rest = store.get("backend").decode().split("|", 2)
    if status == "error":
        raise TopologyError(rest[0])
    backend, reason = rest[0], rest[1]
    log.info("Backend: %s (%s)", backend, reason)
    dist.init_process_group(
        backend,
        store=dist.PrefixStore("pg/", store),
        rank=topo.rank,
        world_size=topo.world_size,
        timeout=timeout,
        device_id=device if backend == "nccl" else None,
    )
    if backend == "nccl":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
    return backend


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- collectives the trainer uses
class SetupError(RuntimeError):
    """A problem reported by one rank (usually rank 0) and raised on every rank."""


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def on_main(topo: Topology, fn: Callable[[], Any], group: Any = None) -> Any:
    """Run ``fn`` on rank 0; broadcast its result, or raise its error on every rank.

    Doubles as a barrier, so other ranks wait while rank 0 downloads / writes. ``group`` lets
    slow work (a download) wait on a process group with a longer timeout.
    """
    result: Any = None
    error: str | None = None
    failure: BaseException | None = None
    if topo.is_main:
        try:
            result = fn()
        except Exception as exc:
            if not in_process_group():
                raise
            error, failure = f"{exc}", exc
    if in_process_group():
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0, group=group)
        result, error = box[0]
    if error is not None:
        if failure is not None:
            raise failure  # the original exception (and traceback) on rank 0
        raise SetupError(f"rank 0 failed: {error}")
    return result


def all_ok(ok: bool, device: torch.device) -> bool:
    """True on every rank when ``ok`` is true on every rank."""
    if not in_process_group():
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() == 0)


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics before evaluating."""
    if in_process_group():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
