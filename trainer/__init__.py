"""slurmlab trainer: CIFAR-10 training that runs the same under srun, torchrun, submitit or alone.

Public API (imported lazily so ``python -m trainer.synthetic`` does not pay for torch)::

    from trainer import Config, load_config, run
    result = run(load_config("jobs/configs/simple_cnn_synthetic.yaml", ["epochs=2"]))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["EXIT_PREEMPTED", "Config", "ConfigError", "load_config", "run"]

if TYPE_CHECKING:
    from trainer.config import Config, ConfigError, load_config
    from trainer.preemption import EXIT_PREEMPTED
    from trainer.train import run


def __getattr__(name: str) -> Any:
    if name in ("Config", "ConfigError", "load_config"):
        from trainer import config

        return getattr(config, name)
    if name == "run":
        from trainer.train import run

        return run
    if name == "EXIT_PREEMPTED":
        from trainer.preemption import EXIT_PREEMPTED

        return EXIT_PREEMPTED
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
