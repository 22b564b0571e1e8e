"""Typed training configuration: YAML file + ``key=value`` overrides, validated in one pass.

Every problem (unknown key, wrong type, out-of-range value, unknown choice, YAML syntax error,
malformed override, missing file) is collected and raised together as one ConfigError, before
anything is trained or written. See trainer/README.md for the meaning of each key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "parse_overrides",
    "resolve_paths",
    "shared_path",
]

DATASETS = ("cifar10", "synthetic")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "constant")
LOADERS = ("fast", "dataloader")
BACKENDS = ("auto", "nccl", "gloo")
LR_SCALINGS = ("linear", "none")
PRECISIONS = ("bf16", "fp16", "fp32")
# The one setting that names the cluster's shared filesystem; every default path derives from it.
SHARED_ENV = "SLURMLAB_SHARED"
DATA_DIR_ENV = "SLURMLAB_DATA_DIR"


class ConfigError(ValueError):
    """One or more configuration problems; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Config:
    # --- model / data ---
    model: str = "resnet50"
    dataset: str = "cifar10"  # cifar10 | synthetic
    data_dir: str = ""  # "" -> $SLURMLAB_DATA_DIR, else $SLURMLAB_SHARED/data
    download: bool = True  # cifar10 only: rank 0 downloads when missing
    synthetic_train: int = 10000  # sizes used when the synthetic set is generated
    synthetic_val: int = 2000
    synthetic_seed: int = 0
    loader: str = "fast"  # fast (whole set on device) | dataloader (Dataset + DistributedSampler)
    num_workers: int = 2  # dataloader path only
    augment: bool = True  # random crop (4 px padding) + horizontal flip
    # --- schedule / optimisation ---
    epochs: int = 40
    batch_size: int = 256  # per rank; global batch = batch_size * world_size
    eval_batch_size: int = 512  # per rank
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # for a global batch of lr_reference_batch
    lr_reference_batch: int = 256
    lr_scaling: str = "linear"  # linear: lr * global_batch / lr_reference_batch | none
    momentum: float = 0.9
    nesterov: bool = True
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # False: no weight decay on BatchNorm weights and biases
    schedule: str = "cosine"  # cosine (linear warm-up + cosine) | onecycle | constant
    warmup_epochs: float = 2.0
    final_lr_ratio: float = 0.0  # lr at the end of the schedule, as a fraction of the peak
    label_smoothing: float = 0.1
    max_steps_per_epoch: int = 0  # 0 = full epochs; >0 truncates (smoke tests, benchmarks)
    seed: int = 0
    # --- speed ---
    precision: str = "bf16"  # bf16 / fp16 autocast on CUDA; CPU always runs fp32
    channels_last: bool = True  # NHWC activations (faster on CUDA under bf16, and on CPU)
    compile: bool = False  # torch.compile the model
    cpu_threads: int = 0  # 0 = auto (SLURM_CPUS_PER_TASK, else cores / local ranks)
    ddp_bucket_cap_mb: int = 25
    # --- distributed ---
    backend: str = "auto"  # auto | nccl | gloo
    dist_timeout_s: int = 600
    # --- outputs / checkpoints ---
    output_dir: str = ""  # "" -> $SLURMLAB_SHARED/runs/$SLURM_JOB_ID in a job, else runs/local
    checkpoint_dir: str = ""  # "" -> <output_dir>/checkpoints
    keep_checkpoints: int = 3  # keep the newest K; 0 keeps all
    checkpoint_every_steps: int = 0  # 0 = only at the end of each epoch
    resume: str = "auto"  # auto (latest valid checkpoint) | never | <path to a checkpoint>
    log_every: int = 100  # batches
    plot: bool = True  # write <output_dir>/curves.png at the end
    # --- preemption ---
    preempt_signal: str = "SIGUSR2"  # signal name, or "none"
    signal_check_every: int = 0  # steps between flag all-reduces; 0 = auto (1 CPU, 20 CUDA)
    max_requeues: int = 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Build and validate from a mapping (values may be strings, as from a CLI)."""
        return _build(dict(data), source="dict")


FIELD_TYPES: dict[str, type] = {
    f.name: {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]
    for f in fields(Config)
}
NULLABLE_PATHS = ("data_dir", "output_dir", "checkpoint_dir")


# ---------------------------------------------------------------- YAML with duplicate check
class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: str, problems: list[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        problems.append(f"config file not found: {path}")
        return {}
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.append(f"{where}: YAML syntax error: {problem}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(
            f"{path}: top level must be a mapping of key: value, got {type(data).__name__}"
        )
        return {}
    return data


# ---------------------------------------------------------------- overrides and coercion
def parse_overrides(items: Iterable[str], problems: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"malformed override {item!r}: expected key=value")
            continue
        out[key] = value.strip()
    return out


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(key: str, value: Any, problems: list[str]) -> Any:
    kind = FIELD_TYPES[key]
    if value is None:
        if key in NULLABLE_PATHS:
            return ""
        problems.append(f"{key}: a value is required (got null)")
        return None
    if isinstance(value, (dict, list)):
        problems.append(f"{key}: expected a single {kind.__name__}, got a {type(value).__name__}")
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        problems.append(f"{key}: expected a boolean (true/false), got {value!r}")
        return None
    if kind is int:
        if isinstance(value, bool):
            problems.append(f"{key}: expected an integer, got {value!r}")
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip().replace("_", ""))
        except ValueError:
            problems.append(f"{key}: expected an integer, got {value!r}")
            return None
    if kind is float:
        if isinstance(value, bool):
            problems.append(f"{key}: expected a number, got {value!r}")
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            problems.append(f"{key}: expected a number, got {value!r}")
            return None
    return str(value)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_vars(key: str, value: str, env: Mapping[str, str], problems: list[str]) -> str:
    """Expand ${VAR} and ${VAR:-default} in path values; unset VAR without default: error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        problems.append(
            f"{key}: environment variable {name} in {value!r} is not set "
            f"(use ${{{name}:-fallback}})"
        )
        return m.group(0)

    return _VAR.sub(sub, value)


# ---------------------------------------------------------------- validation
def _check_choice(cfg: Config, key: str, choices: Iterable[str], problems: list[str]) -> None:
    value = getattr(cfg, key)
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{key}: unknown {key} {value!r}{hint}; choose one of {choices}")


def _validate(cfg: Config, problems: list[str]) -> None:
    from trainer.models import available_models

    def need(cond: bool, msg: str) -> None:
        if not cond:
            problems.append(msg)

    _check_choice(cfg, "model", available_models(), problems)
    _check_choice(cfg, "dataset", DATASETS, problems)
    _check_choice(cfg, "optimizer", OPTIMIZERS, problems)
    _check_choice(cfg, "schedule", SCHEDULES, problems)
    _check_choice(cfg, "loader", LOADERS, problems)
    _check_choice(cfg, "backend", BACKENDS, problems)
    _check_choice(cfg, "lr_scaling", LR_SCALINGS, problems)
    _check_choice(cfg, "precision", PRECISIONS, problems)
    need(cfg.epochs >= 1, f"epochs: must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"batch_size: must be >= 1, got {cfg.batch_size}")
    need(cfg.eval_batch_size >= 1, f"eval_batch_size: must be >= 1, got {cfg.eval_batch_size}")
    need(cfg.lr > 0, f"lr: must be > 0, got {cfg.lr}")
    need(
        cfg.lr_reference_batch >= 1,
        f"lr_reference_batch: must be >= 1, got {cfg.lr_reference_batch}",
    )
    need(0 <= cfg.momentum < 1, f"momentum: must be in [0, 1), got {cfg.momentum}")
    need(
        not (cfg.nesterov and cfg.optimizer == "sgd" and cfg.momentum == 0),
        "nesterov: needs momentum > 0 (set nesterov=false or momentum=0.9)",
    )
    need(0 <= cfg.adam_beta1 < 1, f"adam_beta1: must be in [0, 1), got {cfg.adam_beta1}")
    need(0 <= cfg.adam_beta2 < 1, f"adam_beta2: must be in [0, 1), got {cfg.adam_beta2}")
    need(cfg.weight_decay >= 0, f"weight_decay: must be >= 0, got {cfg.weight_decay}")
    need(cfg.warmup_epochs >= 0, f"warmup_epochs: must be >= 0, got {cfg.warmup_epochs}")
    need(
        cfg.warmup_epochs < cfg.epochs or cfg.schedule == "constant",
        f"warmup_epochs: must be < epochs ({cfg.warmup_epochs} >= {cfg.epochs}): warm-up "
        "would take the whole run",
    )
    need(
        0 <= cfg.final_lr_ratio <= 1, f"final_lr_ratio: must be in [0, 1], got {cfg.final_lr_ratio}"
    )
    need(
        0 <= cfg.label_smoothing < 1,
        f"label_smoothing: must be in [0, 1), got {cfg.label_smoothing}",
    )
    need(
        cfg.max_steps_per_epoch >= 0,
        f"max_steps_per_epoch: must be >= 0, got {cfg.max_steps_per_epoch}",
    )
    need(cfg.num_workers >= 0, f"num_workers: must be >= 0, got {cfg.num_workers}")
    need(cfg.synthetic_train >= 10, f"synthetic_train: must be >= 10, got {cfg.synthetic_train}")
    need(cfg.synthetic_val >= 1, f"synthetic_val: must be >= 1, got {cfg.synthetic_val}")
    need(cfg.cpu_threads >= 0, f"cpu_threads: must be >= 0, got {cfg.cpu_threads}")
    need(
        cfg.ddp_bucket_cap_mb >= 1, f"ddp_bucket_cap_mb: must be >= 1, got {cfg.ddp_bucket_cap_mb}"
    )
    need(cfg.dist_timeout_s >= 1, f"dist_timeout_s: must be >= 1, got {cfg.dist_timeout_s}")
    need(
        cfg.keep_checkpoints >= 0,
        f"keep_checkpoints: must be >= 0 (0 keeps all), got {cfg.keep_checkpoints}",
    )
    need(
        cfg.checkpoint_every_steps >= 0,
        f"checkpoint_every_steps: must be >= 0, got {cfg.checkpoint_every_steps}",
    )
    need(cfg.log_every >= 1, f"log_every: must be >= 1, got {cfg.log_every}")
    need(
        cfg.signal_check_every >= 0,
        f"signal_check_every: must be >= 0 (0 = auto), got {cfg.signal_check_every}",
    )
    need(cfg.max_requeues >= 0, f"max_requeues: must be >= 0, got {cfg.max_requeues}")
    if cfg.preempt_signal.lower() != "none":
        try:
            signal_from_name(cfg.preempt_signal)
        except ValueError as exc:
            problems.append(f"preempt_signal: {exc}")
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).is_file():
        problems.append(
            f"resume: must be 'auto', 'never' or an existing checkpoint file; "
            f"{cfg.resume!r} does not exist"
        )


def signal_from_name(name: str) -> signal.Signals:
    """'USR2', 'SIGUSR2' or '12' -> signal.SIGUSR2."""
    text = name.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text))
        except ValueError:
            raise ValueError(f"unknown signal number {name!r}") from None
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text in ("SIGKILL", "SIGSTOP"):
        raise ValueError(f"{text} cannot be caught")
    try:
        return signal.Signals[text]
    except KeyError:
        raise ValueError(f"unknown signal {name!r} (e.g. SIGUSR2, SIGUSR1, SIGTERM)") from None


# ---------------------------------------------------------------- entry points
def _build(
    raw: dict[str, Any],
    source: str,
    problems: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    problems = [] if problems is None else problems
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in FIELD_TYPES:
            close = difflib.get_close_matches(str(key), list(FIELD_TYPES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {key!r} in {source}{hint}")
            continue
        coerced = _coerce(key, value, problems)
        if coerced is None:
            continue
        if key in NULLABLE_PATHS and coerced:
            coerced = _expand_vars(key, coerced, env, problems)
        values[key] = coerced
    cfg = Config(**values)  # keys that failed to parse keep their defaults here
    _validate(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(
    path: str | None = None, overrides: Iterable[str] = (), env: Mapping[str, str] | None = None
) -> Config:
    """Load ``path`` (optional; defaults are the ResNet50/CIFAR-10 recipe) and apply overrides.

    Raises ConfigError listing every problem found.
    """
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if path is not None:
        for key, value in _read_yaml(path, problems).items():
            raw[key] = value
    over = parse_overrides(overrides, problems)
    unknown_problems: list[str] = []
    merged: dict[str, Any] = dict(raw)
    for key, value in over.items():
        if key not in FIELD_TYPES:
            close = difflib.get_close_matches(key, list(FIELD_TYPES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            unknown_problems.append(f"unknown key {key!r} in override {key}={value}{hint}")
            continue
        merged[key] = value
    problems.extend(unknown_problems)
    return _build(merged, source=path or "config", problems=problems, env=env)


def shared_path(*parts: str, env: Mapping[str, str] | None = None) -> str:
    """A default path on the shared filesystem: under $SLURMLAB_SHARED when it is set, else
    relative to the working directory (a job's submit directory, shared by its nodes on any
    cluster that runs jobs from a shared home or project directory)."""
    env = os.environ if env is None else env
    return os.path.join(env.get(SHARED_ENV, ""), *parts)


def resolve_paths(cfg: Config, env: Mapping[str, str] | None = None) -> Config:
    """Fill the derived defaults of data_dir, output_dir and checkpoint_dir.

    data_dir precedence: config/CLI value > $SLURMLAB_DATA_DIR > $SLURMLAB_SHARED/data.
    output_dir: config/CLI value > $SLURMLAB_SHARED/runs/$SLURM_JOB_ID under Slurm > runs/local.
    Without $SLURMLAB_SHARED both are relative to the working directory (see shared_path).
    """
    env = os.environ if env is None else env
    data_dir = cfg.data_dir or env.get(DATA_DIR_ENV) or shared_path("data", env=env)
    output_dir = cfg.output_dir
    if not output_dir:
        job = env.get("SLURM_JOB_ID")
        output_dir = shared_path("runs", job, env=env) if job else "runs/local"
    checkpoint_dir = cfg.checkpoint_dir or os.path.join(output_dir, "checkpoints")
    return dataclasses.replace(
        cfg, data_dir=data_dir, output_dir=output_dir, checkpoint_dir=checkpoint_dir
    )
