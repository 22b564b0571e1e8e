"""slurmlab's own checkout: the trainer's tests and benchmarks, run in the trainer's image.

    python3 -m slurmlab.dev test-unit [pytest args]     # make test-unit
    python3 -m slurmlab.dev bench [--gpus] [bench args]  # make bench

They run in slurmlab-test (the trainer image plus pytest; slurmlab.images), built where missing,
as the image's job uid, with the checkout mounted read-only at its cluster path: the same Python
and packages the cluster's jobs use, and nothing of the host's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from slurmlab import docker, facts, images, resources
from slurmlab.errors import SlurmlabError


def test_image() -> str:
    planned = images.cluster_images("trainer", None)
    tools = images.test_layer(planned.cluster_tag)
    images.ensure([*planned.layers, tools])
    return tools.tag


def in_image(command: Sequence[str], gpus: bool = False) -> int:
    checkout = resources.cluster_dir()
    args = [
        "docker", "run", "--rm", "-u", facts.setting("JOB_UID"), "-e", "HOME=/tmp",
        "-v", f"{checkout}:{facts.CHECKOUT_MOUNT}:ro", "-w", facts.CHECKOUT_MOUNT,
        "--shm-size=1g", *(["--gpus", "all"] if gpus else []), test_image(), *command,
    ]  # fmt: skip
    return docker.run(args).returncode


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        match argv[:1]:
            case ["test-unit"]:
                rest = argv[1:]
                paths = [] if any(a.startswith("tests/") for a in rest) else ["tests/unit"]
                return in_image(
                    ["python", "-m", "pytest", "-p", "no:cacheprovider", "-q", *paths, *rest]
                )
            case ["bench"]:
                rest = argv[1:]
                gpus = "--gpus" in rest
                return in_image(
                    ["python", "-m", "bench", *(a for a in rest if a != "--gpus")], gpus
                )
        print(__doc__, file=sys.stderr)
        return 2
    except SlurmlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
