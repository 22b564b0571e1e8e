"""Config loading, overrides, path defaults and the one-error-listing-everything validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from trainer.config import Config, ConfigError, load_config, resolve_paths

CONFIGS = REPO / "jobs" / "configs"


@pytest.mark.parametrize("name", ["resnet50_cifar10.yaml", "simple_cnn_synthetic.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(str(CONFIGS / name))
    assert cfg.batch_size >= 1 and cfg.epochs >= 1


def test_default_config_is_the_resnet50_recipe() -> None:
    shipped = load_config(str(CONFIGS / "resnet50_cifar10.yaml"))
    defaults = Config()
    for key in (
        "model",
        "dataset",
        "epochs",
        "batch_size",
        "lr",
        "optimizer",
        "schedule",
        "weight_decay",
        "label_smoothing",
        "nesterov",
    ):
        assert getattr(shipped, key) == getattr(defaults, key), key


def test_short_overrides_and_types(tmp_path: Path) -> None:
    cfg = load_config(
        str(CONFIGS / "resnet50_cifar10.yaml"),
        [
            "model=simple_cnn",
            "dataset=synthetic",
            "epochs=3",
            "batch_size=64",
            "lr=1e-3",
            "compile=true",
            "augment=no",
            "warmup_epochs=1",
        ],
    )
    assert (cfg.model, cfg.dataset, cfg.epochs, cfg.batch_size) == (
        "simple_cnn",
        "synthetic",
        3,
        64,
    )
    assert cfg.lr == pytest.approx(1e-3) and cfg.compile is True and cfg.augment is False


def test_yaml_scientific_notation_without_dot(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("lr: 1e-3\nweight_decay: 5e-4\n")  # PyYAML reads these as strings
    cfg = load_config(str(p))
    assert cfg.lr == pytest.approx(1e-3) and cfg.weight_decay == pytest.approx(5e-4)


def test_path_defaults_and_precedence() -> None:
    cfg = Config()
    r = resolve_paths(cfg, env={})
    assert (r.data_dir, r.output_dir) == ("data", "runs/local")
    assert r.checkpoint_dir == "runs/local/checkpoints"
    r = resolve_paths(cfg, env={"SLURMLAB_SHARED": "/fs", "SLURM_JOB_ID": "55"})
    assert (r.data_dir, r.output_dir) == ("/fs/data", "/fs/runs/55")
    assert r.checkpoint_dir == "/fs/runs/55/checkpoints"
    r = resolve_paths(cfg, env={"SLURM_JOB_ID": "55"})  # no shared root: the submit directory
    assert (r.data_dir, r.output_dir) == ("data", "runs/55")
    r = resolve_paths(cfg, env={"SLURMLAB_DATA_DIR": "/d", "SLURMLAB_SHARED": "/fs"})
    assert r.data_dir == "/d"
    r = resolve_paths(Config(data_dir="/explicit"), env={"SLURMLAB_DATA_DIR": "/d"})
    assert r.data_dir == "/explicit"  # config/CLI beats the environment variable


def test_env_var_expansion_in_paths() -> None:
    cfg = load_config(None, ["output_dir=/runs/${SLURM_JOB_ID:-local}"], env={})
    assert cfg.output_dir == "/runs/local"
    cfg = load_config(None, ["output_dir=/runs/${SLURM_JOB_ID}"], env={"SLURM_JOB_ID": "9"})
    assert cfg.output_dir == "/runs/9"
    with pytest.raises(ConfigError, match=r"SLURM_JOB_ID .* is not set"):
        load_config(None, ["output_dir=/runs/${SLURM_JOB_ID}"], env={})


BAD_YAML = "model: resnet50\nepochs: [1, 2\nlr: 0.1\n"


@pytest.mark.parametrize(
    ("overrides", "yaml_text", "expected"),
    [
        (
            ["batchsize=4"],
            None,
            "unknown key 'batchsize' in override batchsize=4 (did you mean 'batch_size'?)",
        ),
        (["batch_size=abc"], None, "batch_size: expected an integer, got 'abc'"),
        (["batch_size=0"], None, "batch_size: must be >= 1, got 0"),
        (["lr=-0.1"], None, "lr: must be > 0, got -0.1"),
        (["epochs=0"], None, "epochs: must be >= 1, got 0"),
        (["epochs=5", "warmup_epochs=5"], None, "warmup_epochs: must be < epochs"),
        (["model=resnet51"], None, "model: unknown model 'resnet51' (did you mean 'resnet50'?)"),
        (["dataset=imagenet"], None, "dataset: unknown dataset 'imagenet'"),
        (["optimizer=adam"], None, "optimizer: unknown optimizer 'adam' (did you mean 'adamw'?)"),
        (["schedule=linear"], None, "schedule: unknown schedule 'linear'"),
        (["loader=fastest"], None, "loader: unknown loader 'fastest'"),
        (["backend=mpi"], None, "backend: unknown backend 'mpi'"),
        (["lr_scaling=sqrt"], None, "lr_scaling: unknown lr_scaling 'sqrt'"),
        (["epochs"], None, "malformed override 'epochs': expected key=value"),
        (["=3"], None, "malformed override '=3'"),
        (["augment=maybe"], None, "augment: expected a boolean (true/false), got 'maybe'"),
        (["preempt_signal=SIGFOO"], None, "preempt_signal: unknown signal 'SIGFOO'"),
        (["preempt_signal=KILL"], None, "preempt_signal: SIGKILL cannot be caught"),
        (["label_smoothing=1.5"], None, "label_smoothing: must be in [0, 1)"),
        (["momentum=0", "nesterov=true"], None, "nesterov: needs momentum > 0"),
        (["keep_checkpoints=-1"], None, "keep_checkpoints: must be >= 0 (0 keeps all), got -1"),
        (["momentum=1"], None, "momentum: must be in [0, 1), got 1"),
        (["final_lr_ratio=2"], None, "final_lr_ratio: must be in [0, 1], got 2"),
        (["momentum=0"], None, "nesterov: needs momentum > 0"),  # nesterov left at true
        (["epochs=1"], None, "warmup_epochs: must be < epochs (2.0 >= 1)"),  # default warm-up
        (["output_dir=/r/${NOPE_A}/${NOPE_B}"], None, "variables NOPE_A and NOPE_B in"),
        (["resume=/nonexistent/ckpt.pt"], None, "resume: must be 'auto', 'never' or an existing"),
        ([], BAD_YAML, "YAML syntax error"),
        ([], "lr: 0.1\nlr: 0.2\n", "duplicate key 'lr' (first on line 1)"),
        ([], "- a\n- b\n", "top level must be a mapping"),
        ([], "epochs: 2\nbatch_sise: 3\n", "unknown key 'batch_sise'"),
        ([], "model:\n  name: resnet50\n", "model: expected a single str, got a dict"),
        ([], "epochs: 2.5\n", "epochs: expected an integer, got 2.5"),
        ([], "epochs: yes\n", "epochs: expected an integer, got True"),  # YAML 1.1 boolean
        ([], "lr: on\n", "lr: expected a number, got True"),
        ([], "model: null\n", "model: a value is required (got null)"),
        ([], "1: 2\n", "unknown key 1 in"),
    ],
)
def test_bad_configs(
    tmp_path: Path, overrides: list[str], yaml_text: str | None, expected: str
) -> None:
    path = None
    if yaml_text is not None:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path) if path else None, overrides)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_yaml_error_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_YAML)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert f"{path}:3:" in info.value.problems[0]


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match=r"config file not found: /nope/x\.yaml"):
        load_config("/nope/x.yaml")


def test_all_problems_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["batch_size=abc", "lr=-1", "foo=1", "model=nope", "epochs"])
    text = "\n".join(info.value.problems)
    for part in (
        "batch_size: expected an integer",
        "lr: must be > 0",
        "unknown key 'foo'",
        "unknown model 'nope'",
        "malformed override 'epochs'",
    ):
        assert part in text
    assert len(info.value.problems) == 5


def test_cross_field_problems_are_reported_with_the_others() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model=nope", "batch_size=x", "momentum=0", "epochs=1"], env={})
    text = "\n".join(info.value.problems)
    for part in ("unknown model 'nope'", "batch_size: expected", "nesterov:", "warmup_epochs:"):
        assert part in text
    assert len(info.value.problems) == 4


def test_lenient_values_and_null_paths(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("data_dir: null\noutput_dir: ~\nepochs: 3.0\npreempt_signal: 10\n")
    cfg = load_config(str(p), ["batch_size=1_000", "augment=off", "nesterov=1", "seed= 7 "])
    assert (cfg.data_dir, cfg.output_dir, cfg.preempt_signal) == ("", "", "10")
    assert (cfg.epochs, cfg.batch_size, cfg.seed) == (3, 1000, 7) and type(cfg.epochs) is int
    assert cfg.augment is False and cfg.nesterov is True
    assert type(load_config(None, ["warmup_epochs=1"]).warmup_epochs) is float


def test_to_dict_round_trip_and_key_order() -> None:
    cfg = load_config(str(CONFIGS / "simple_cnn_synthetic.yaml"), ["epochs=3"])
    data = cfg.to_dict()
    assert list(data)[:3] == ["model", "dataset", "data_dir"] and data["epochs"] == 3
    assert Config.from_dict(data) == cfg
    assert resolve_paths(cfg, env={}).to_dict()["output_dir"] == "runs/local"
    assert cfg.output_dir == ""  # resolve_paths returns a new Config


def test_from_dict_validates() -> None:
    assert Config.from_dict({"epochs": "3"}).epochs == 3
    with pytest.raises(ConfigError, match="batch_size"):
        Config.from_dict({"batch_size": 0})


def test_cli_prints_errors_and_exits_2_without_traceback(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "--config",
            str(CONFIGS / "resnet50_cifar10.yaml"),
            "batch_size=abc",
            "lr=-1",
            "modle=resnet50",
            f"output_dir={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "did you mean 'model'" in proc.stderr
    assert not out.exists()  # nothing written before validation


def test_cli_print_config() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "--config",
            str(CONFIGS / "simple_cnn_synthetic.yaml"),
            "epochs=7",
            "--print-config",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epochs: 7" in proc.stdout and "output_dir: runs/local" in proc.stdout
