"""Typed training configuration: YAML file + ``key=value`` overrides, validated in one pass.

:class:`Config` is a pydantic model: its annotations and ``Field`` constraints are the one
statement of each key's type, range and choices. Pydantic coerces and checks every value and
:func:`_message` turns each entry of its error list into our wording. Every problem (unknown
key, wrong type, out-of-range value, unknown choice, YAML syntax error, duplicate key, malformed
override, missing file, unset ``${VAR}``) is collected and raised together as one ConfigError,
before anything is trained or written. See trainer/README.md for the meaning of each key.
"""

from __future__ import annotations

import difflib
import os
import re
import signal
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "parse_overrides",
    "resolve_paths",
    "shared_path",
    "signal_from_name",
]

# The one setting that names the cluster's shared filesystem; every default path derives from it.
SHARED_ENV = "SLURMLAB_SHARED"
DATA_DIR_ENV = "SLURMLAB_DATA_DIR"


class ConfigError(ValueError):
    """One or more configuration problems; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _problem(text: str) -> PydanticCustomError:
    """A validator's problem, reported as ``<key>: <text>`` (the text is not a template)."""
    return PydanticCustomError("config", "{problem}", {"problem": text})


def _not_bool(value: Any) -> Any:
    # YAML reads yes/no/on/off as booleans, which pydantic would take as 1 / 0 for a number.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
# "" (also written null) means "derived from the environment" (resolve_paths).
PathOrDerived = Annotated[str, BeforeValidator(lambda v: "" if v is None else v)]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")  # ${VAR} or ${VAR:-default}


class Config(BaseModel):
    """Every training setting; ``Config()`` is the ResNet50 / CIFAR-10 recipe."""

    # Unknown keys are errors. A YAML number is taken as text for a text key (`resume: 12`).
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    # --- model / data ---
    model: str = "resnet50"  # a name registered in trainer/models.py
    dataset: Literal["cifar10", "synthetic"] = "cifar10"
    data_dir: PathOrDerived = ""  # "" -> $SLURMLAB_DATA_DIR, else $SLURMLAB_SHARED/data
    download: bool = True  # cifar10 only: rank 0 downloads when missing
    synthetic_train: Int = Field(10000, ge=10)  # sizes used when the synthetic set is generated
    synthetic_val: Int = Field(2000, ge=1)
    synthetic_seed: Int = 0
    # fast (whole set on device) | dataloader (Dataset + DistributedSampler)
    loader: Literal["fast", "dataloader"] = "fast"
    num_workers: Int = Field(2, ge=0)  # dataloader path only
    augment: bool = True  # random crop (4 px padding) + horizontal flip
    # --- schedule / optimisation ---
    epochs: Int = Field(40, ge=1)
    batch_size: Int = Field(256, ge=1)  # per rank; global batch = batch_size * world_size
    eval_batch_size: Int = Field(512, ge=1)  # per rank
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: Float = Field(0.1, gt=0)  # for a global batch of lr_reference_batch
    lr_reference_batch: Int = Field(256, ge=1)
    # linear: lr * global_batch / lr_reference_batch | none
    lr_scaling: Literal["linear", "none"] = "linear"
    momentum: Float = Field(0.9, ge=0, lt=1)
    nesterov: bool = Field(True, validate_default=True)  # checked against momentum, see below
    adam_beta1: Float = Field(0.9, ge=0, lt=1)
    adam_beta2: Float = Field(0.999, ge=0, lt=1)
    weight_decay: Float = Field(5e-4, ge=0)
    decay_norm_and_bias: bool = False  # False: no weight decay on BatchNorm weights and biases
    # cosine (linear warm-up + cosine) | onecycle | constant
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: Float = Field(2.0, ge=0, validate_default=True)  # checked against epochs
    final_lr_ratio: Float = Field(0.0, ge=0, le=1)  # lr at the end, as a fraction of the peak
    label_smoothing: Float = Field(0.1, ge=0, lt=1)
    max_steps_per_epoch: Int = Field(0, ge=0)  # 0 = full epochs; >0 truncates (smoke tests)
    seed: Int = 0
    # --- speed ---
    # bf16 / fp16 autocast on CUDA; CPU always runs fp32
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    channels_last: bool = True  # NHWC activations (faster on CUDA under bf16, and on CPU)
    compile: bool = False  # torch.compile the model
    cpu_threads: Int = Field(0, ge=0)  # 0 = auto (SLURM_CPUS_PER_TASK, else cores / local ranks)
    ddp_bucket_cap_mb: Int = Field(25, ge=1)
    # --- distributed ---
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    dist_timeout_s: Int = Field(600, ge=1)
    # --- outputs / checkpoints ---
    # "" -> $SLURMLAB_SHARED/runs/$SLURM_JOB_ID in a job, else runs/local
    output_dir: PathOrDerived = ""
    checkpoint_dir: PathOrDerived = ""  # "" -> <output_dir>/checkpoints
    keep_checkpoints: Int = Field(3, ge=0)  # keep the newest K; 0 keeps all
    checkpoint_every_steps: Int = Field(0, ge=0)  # 0 = only at the end of each epoch
    resume: str = "auto"  # auto (latest valid checkpoint) | never | <path to a checkpoint>
    log_every: Int = Field(100, ge=1)  # batches
    plot: bool = True  # write <output_dir>/curves.png at the end
    # --- preemption ---
    preempt_signal: str = "SIGUSR2"  # signal name, or "none"
    signal_check_every: Int = Field(0, ge=0)  # steps between flag all-reduces; 0 = auto
    max_requeues: Int = Field(3, ge=0)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Build and validate from a mapping (values may be strings, as from a CLI)."""
        return _build(dict(data), source="dict", problems=[], env=os.environ)

    @field_validator("model")
    @classmethod
    def _registered_model(cls, name: str) -> str:
        from trainer.models import available_models  # imports torch: not at module import

        if name not in available_models():
            raise _problem(_unknown_choice("model", name, available_models()))
        return name

    @field_validator("data_dir", "output_dir", "checkpoint_dir")
    @classmethod
    def _expand_env(cls, value: str, info: ValidationInfo) -> str:
        """${VAR} and ${VAR:-default}; the environment is load_config's ``env`` (context)."""
        env: Mapping[str, str] = (info.context or {}).get("env", os.environ)
        unset = [m[1] for m in _VAR.finditer(value) if not env.get(m[1]) and m[2] is None]
        if unset:
            many = len(unset) > 1
            raise _problem(
                f"environment variable{'s' * many} {' and '.join(unset)} in {value!r} "
                f"{'are' if many else 'is'} not set (use ${{{unset[0]}:-fallback}})"
            )
        return _VAR.sub(lambda m: env.get(m[1]) or m[2], value)

    # The cross-field checks are field validators, not a model_validator: pydantic runs a model
    # validator only when every field is valid, which would hide these problems until the others
    # are fixed. info.data holds the fields declared above this one that validated (defaults
    # included); validate_default runs them when the key itself is left at its default.
    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, nesterov: bool, info: ValidationInfo) -> bool:
        if nesterov and info.data.get("optimizer") == "sgd" and info.data.get("momentum") == 0:
            raise _problem("needs momentum > 0 (set nesterov=false or momentum=0.9)")
        return nesterov

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_shorter_than_run(cls, warmup: float, info: ValidationInfo) -> float:
        epochs = info.data.get("epochs")
        if epochs is not None and warmup >= epochs and info.data.get("schedule") != "constant":
            raise _problem(
                f"must be < epochs ({warmup} >= {epochs}): warm-up would take the whole run"
            )
        return warmup

    @field_validator("resume")
    @classmethod
    def _resume_target(cls, value: str) -> str:
        if value not in ("auto", "never") and not Path(value).is_file():
            raise _problem(
                f"must be 'auto', 'never' or an existing checkpoint file; {value!r} does not exist"
            )
        return value

    @field_validator("preempt_signal")
    @classmethod
    def _catchable_signal(cls, name: str) -> str:
        if name.lower() != "none":
            try:
                signal_from_name(name)
            except ValueError as exc:
                raise _problem(str(exc)) from None
        return name


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


# ---------------------------------------------------------------- pydantic errors -> our messages
_EXPECTED = {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string"}
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_RANGE_NOTES = {"keep_checkpoints": " (0 keeps all)", "signal_check_every": " (0 = auto)"}


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_choice(key: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    return f"unknown {key} {value!r}{_did_you_mean(str(value), choices)}; choose one of {choices}"


def _bounds(field: FieldInfo) -> str:
    """The field's Field(ge/gt/le/lt) range: ``>= 1``, ``> 0`` or ``in [0, 1)``."""
    b = {k: getattr(m, k) for m in field.metadata for k in _OPS if hasattr(m, k)}
    if len(b) == 2:  # a lower and an upper bound
        low = f"[{b['ge']}" if "ge" in b else f"({b['gt']}"
        high = f"{b['le']}]" if "le" in b else f"{b['lt']})"
        return f"in {low}, {high}"
    ((op, limit),) = b.items()
    return f"{_OPS[op]} {limit}"


def _message(error: ErrorDetails, origin: Callable[[str], str]) -> str:
    """One pydantic error -> ``<key>: <problem>``; ``origin(key)`` says where a key was given."""
    key, value, kind = error["loc"][0], error["input"], error["type"]
    if kind in ("extra_forbidden", "invalid_key"):  # invalid_key: a YAML key that is not text
        hint = _did_you_mean(str(key), Config.model_fields)
        return f"unknown key {key!r} in {origin(str(key))}{hint}"
    field = Config.model_fields[str(key)]
    expects = str if get_origin(field.annotation) is Literal else field.annotation
    if kind == "config":  # raised by one of Config's validators, already in our words
        text = error["ctx"]["problem"]
    elif value is None:
        text = "a value is required (got null)"
    elif isinstance(value, (dict, list)):
        text = f"expected a single {expects.__name__}, got a {type(value).__name__}"
    elif kind == "literal_error":
        text = _unknown_choice(str(key), value, get_args(field.annotation))
    elif kind in _BOUND_ERRORS:
        text = f"must be {_bounds(field)}{_RANGE_NOTES.get(str(key), '')}, got {value}"
    else:  # the value is not of the field's type (int_parsing, bool_parsing, ...)
        text = f"expected {_EXPECTED[expects]}, got {value!r}"
    return f"{key}: {text}"


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


def _read_yaml(path: str, problems: list[str]) -> dict[Any, Any]:
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


# ---------------------------------------------------------------- entry points
def _build(
    values: dict[Any, Any],
    source: str,
    problems: list[str],
    env: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Validate ``values``; raise ConfigError with ``problems`` plus every validation problem."""
    given = overrides or {}

    def origin(key: str) -> str:
        return f"override {key}={given[key]}" if key in given else source

    try:
        cfg = Config.model_validate(values, context={"env": env})
    except ValidationError as exc:
        raise ConfigError(problems + [_message(e, origin) for e in exc.errors()]) from None
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
    raw = _read_yaml(path, problems) if path is not None else {}
    over = parse_overrides(overrides, problems)
    env = os.environ if env is None else env
    return _build({**raw, **over}, path or "config", problems, env, over)


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
    return cfg.model_copy(
        update={"data_dir": data_dir, "output_dir": output_dir, "checkpoint_dir": checkpoint_dir}
    )
