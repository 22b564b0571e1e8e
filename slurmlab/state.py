"""What a cluster was last given, kept by the CLI in <project>/.slurmlab/<cluster>/cluster.json.

The shape, images and site of the last `up` and the digests of what Compose was handed and of
what the site made the cluster do: the next `up` keeps the shape and the site, compares the rest
to decide whether anything must change, and `down`,
`status` and `clean` reach the cluster whatever slurmlab.yaml says now. `slurmlab clean` forgets
it. Only the CLI writes and reads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from slurmlab import facts

FILE_NAME = "cluster.json"
LEGACY_FILE_NAME = "shape.env"  # written by slurmlab 0.1.0's scripts/up.sh


@dataclass(frozen=True)
class Recorded:
    nodes: int | None = None
    gpus_per_node: int | None = None
    gpu_mode: str | None = None
    slurm_image: str | None = None
    image: str | None = None  # the login node's and the compute nodes'
    compose_digest: str | None = None  # of the files and settings Compose was started with
    site: str | None = None  # the site description: a file's absolute path, or "default"
    site_digest: str | None = None  # of what the site made the cluster do (slurmlab.site)
    # What each node offers per GPU (the site's nodes:), as its slurmd registered it.
    cpus_per_gpu: int | None = None
    memory_per_gpu_mb: int | None = None
    rest_port: int | None = None  # the REST API's port on the host's 127.0.0.1


def load(state_dir: Path) -> Recorded:
    path = state_dir / FILE_NAME
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            return Recorded(**{k: v for k, v in data.items() if k in Recorded.__annotations__})
        except (ValueError, TypeError):
            return Recorded()  # unreadable: as if never started; the next `up` rewrites it
    legacy = state_dir / LEGACY_FILE_NAME
    if legacy.is_file():
        old = facts.read_env_file(legacy)
        mode = old.get("GPU_MODE") or ("nvidia" if old.get("GPUS") == "1" else "emulated")
        return Recorded(
            nodes=int(old["NODES"]) if old.get("NODES", "").isdigit() else None,
            gpus_per_node=int(old["GPUS_PER_NODE"])
            if old.get("GPUS_PER_NODE", "").isdigit()
            else None,
            gpu_mode=mode,
        )
    return Recorded()


def save(state_dir: Path, recorded: Recorded) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FILE_NAME
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(asdict(recorded), indent=2) + "\n")
    temp.replace(path)
    (state_dir / LEGACY_FILE_NAME).unlink(missing_ok=True)
