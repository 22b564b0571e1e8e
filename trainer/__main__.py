"""CLI: ``python -m trainer --config jobs/configs/<name>.yaml [key=value ...]``.

Exit codes: 0 done (or preempted and requeued), 1 unexpected error (traceback), 2 invalid
configuration / usage, 3 setup error (launch environment, data, checkpoints: one clear message),
75 preempted with a checkpoint saved but not requeued, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys

from trainer.config import ConfigError, load_config

EXIT_CONFIG = 2
EXIT_SETUP = 3


def _rank_from_env() -> int:
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _print_error(message: str) -> None:
    lines = str(message).splitlines() or [""]
    print(f"error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"       {line}", file=sys.stderr)
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train an image classifier on CIFAR-10 (single process, torchrun, srun or "
        "submitit; GPU/NCCL or CPU/gloo). Keys are documented in trainer/README.md.",
    )
    parser.add_argument(
        "--config",
        "-c",
        metavar="YAML",
        help="config file (default: built-in ResNet50 / CIFAR-10 recipe)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only validate the config and overrides (exit 0, or 2 with the problems)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config keys, e.g. epochs=5 batch_size=128",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        if _rank_from_env() == 0:
            for problem in exc.problems:
                _print_error(problem)
        return EXIT_CONFIG
    if args.check:
        return 0
    if args.print_config:
        import yaml

        from trainer.config import resolve_paths

        print(yaml.safe_dump(resolve_paths(cfg).to_dict(), sort_keys=False), end="")
        return 0

    from trainer.checkpoint import CheckpointError, CheckpointMismatch
    from trainer.data import DataError
    from trainer.preemption import EXIT_PREEMPTED
    from trainer.topology import TopologyError
    from trainer.train import SetupError, run

    try:
        result = run(cfg)
    except (
        TopologyError,
        DataError,
        CheckpointError,
        CheckpointMismatch,
        SetupError,
        ConfigError,
    ) as exc:
        _print_error(str(exc))
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    sys.stdout.flush()
    code = int(result["exit_code"])
    if code == EXIT_PREEMPTED and _rank_from_env() != 0:
        # One status per job: rank 0 reports "preempted, not requeued". Were every rank to exit
        # 75, `srun --kill-on-bad-exit` would kill rank 0 while it still finishes its summary.
        return 0
    return code


if __name__ == "__main__":
    raise SystemExit(main())
