"""Golden-file test of the sbatch script submitit generates for jobs/submit.py's settings.

A change in our executor settings or in submitit's script shows up here as a diff to review
(regenerate with SLURMLAB_UPDATE_GOLDEN=1).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from submitit.slurm.slurm import _make_sbatch_string

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"


def load_submit_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("slurmlab_submit", REPO / "jobs" / "submit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("golden", "kwargs"),
    [
        ("submitit_ddp.sbatch", {"name": "ddp-submitit", "nodes": 4, "gpus_per_node": 1}),
        ("submitit_sweep.sbatch", {"name": "sweep", "nodes": 1, "gpus_per_node": 1}),
    ],
)
def test_generated_sbatch_script_matches_golden_file(golden: str, kwargs: dict) -> None:
    submit = load_submit_module()
    params = submit.slurm_parameters(timeout_min=120, partition=None, **kwargs)
    folder = "/shared/submitit/%j"
    text = _make_sbatch_string(
        command="/opt/venv/bin/python -u -m submitit.core._submit /shared/submitit/%j",
        folder=folder,
        **params,
    )
    path = GOLDEN / golden
    if os.environ.get("SLURMLAB_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_golden_ddp_script_asks_for_what_the_trainer_needs() -> None:
    text = (GOLDEN / "submitit_ddp.sbatch").read_text()
    for line in [
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --mem-per-gpu=8G",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --requeue",
        "#SBATCH --time=120",
    ]:
        assert line in text.splitlines(), line


def test_sweep_grid_expands_every_combination() -> None:
    submit = load_submit_module()
    assert submit.sweep_grid(["lr=0.1,0.2", "epochs=1,2"]) == [
        ["lr=0.1", "epochs=1"],
        ["lr=0.1", "epochs=2"],
        ["lr=0.2", "epochs=1"],
        ["lr=0.2", "epochs=2"],
    ]
    with pytest.raises(SystemExit, match="key=v1,v2"):
        submit.sweep_grid(["lr"])
