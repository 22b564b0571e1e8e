"""Benchmark 3: time to accuracy - SimpleCNN on the synthetic set with the trainer's ``run()``.
This module owns that run's config, reading its metrics and the table and check.

The run happens in a child process (``python -m bench.accuracy --worker``) with the launcher
variables scrubbed, so it is a plain single-process run whatever shell started the benchmark,
and its logging, threads and signal handling do not touch the benchmark process. The trainer
writes ``metrics.jsonl``; the time to accuracy is measured on its records: from the ``start``
record (data staged, model built, first step about to run) to the first ``epoch`` record whose
validation accuracy reaches the target. It includes validation and the per-epoch checkpoints,
as a real run does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, Check, child_env, format_checks, format_table
from trainer.metrics import read_metrics


@dataclass
class AccuracyPlan:
    n_train: int
    n_val: int
    epochs: int
    batch: int = 64
    target: float = 80.0  # % validation accuracy


def overrides(plan: AccuracyPlan, data_dir: Path, out_dir: Path) -> list[str]:
    """A small fast-path SimpleCNN config (the shape of jobs/configs/simple_cnn_synthetic.yaml)."""
    values: dict[str, Any] = {
        "model": "simple_cnn",
        "dataset": "synthetic",
        "data_dir": data_dir,
        "synthetic_train": plan.n_train,
        "synthetic_val": plan.n_val,
        "synthetic_seed": 0,
        "loader": "fast",
        "augment": True,
        "epochs": plan.epochs,
        "batch_size": plan.batch,
        "eval_batch_size": 500,
        "optimizer": "sgd",
        "lr": 0.2,
        "lr_reference_batch": 256,
        "schedule": "onecycle",
        "warmup_epochs": 0.5,
        "label_smoothing": 0.1,
        "output_dir": out_dir,
        "resume": "never",
        "keep_checkpoints": 1,
        "log_every": 1000,
        "plot": False,
        "preempt_signal": "none",
        "seed": 0,
    }
    return [f"{k}={v}" for k, v in values.items()]


def _worker(argv: list[str]) -> int:
    """``--worker RESULT_JSON key=value ...``: one trainer run, result dict to RESULT_JSON."""
    from trainer import load_config, run

    out, items = argv[1], argv[2:]
    result = run(load_config(None, items), handle_signals=False)
    Path(out).write_text(json.dumps(result, default=str))
    return 0


def time_to_accuracy(records: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """From metrics.jsonl records: epochs and seconds until val_acc >= target (None if never)."""
    start = next(r for r in records if r.get("kind") == "start")
    epochs = [r for r in records if r.get("kind") == "epoch"]
    hit = next((r for r in epochs if r["val_acc"] >= target), None)
    return {
        "target": target,
        "reached": hit is not None,
        "epochs": hit["epoch"] + 1 if hit else None,
        "seconds": hit["time"] - start["time"] if hit else None,
        "best_val_acc": max((r["val_acc"] for r in epochs), default=None),
        "history": [
            {k: r[k] for k in ("epoch", "train_acc", "val_acc", "epoch_time_s", "img_per_s")}
            | {"since_start_s": r["time"] - start["time"]}
            for r in epochs
        ],
    }


def run_accuracy(plan: AccuracyPlan, work_dir: Path, device_type: str) -> dict[str, Any]:
    """Train in a child process, then print the table and the check from its metrics.jsonl."""
    out_dir = work_dir / "run"
    log_path, result_path = work_dir / "train.log", work_dir / "result.json"
    items = overrides(plan, work_dir / "data", out_dir)
    cmd = [sys.executable, "-m", "bench.accuracy", "--worker", str(result_path), *items]
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        code = subprocess.call(
            cmd, cwd=REPO, env=child_env(device_type), stdout=log, stderr=subprocess.STDOUT
        )
    wall = time.perf_counter() - t0
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"trainer run failed (exit {code}):\n{tail}")
    result = json.loads(result_path.read_text())
    tta = time_to_accuracy(read_metrics(out_dir / "metrics.jsonl"), plan.target)
    _print_history(plan, tta, device_type)
    if tta["reached"]:
        print(
            f"reached {plan.target:g}% after {tta['epochs']} epoch(s), {tta['seconds']:.1f} s "
            f"of training (incl. validation + checkpoints); whole run {result['elapsed_s']:.1f} s, "
            f"process wall {wall:.1f} s (incl. interpreter start and data generation)"
        )
    else:
        print(
            f"did not reach {plan.target:g}% in {plan.epochs} epochs (best "
            f"{tta['best_val_acc']:.1f}%)"
        )
    check = Check(
        f"reaches {plan.target:g}% val acc within {plan.epochs} epochs",
        tta["best_val_acc"],
        plan.target,
        unit="%",
        note=f"{tta['epochs']} epoch(s), {tta['seconds']:.1f} s" if tta["reached"] else "",
    )
    print(format_checks([check]))
    return {
        "plan": plan.__dict__,
        "time_to_accuracy": tta,
        "run_elapsed_s": result["elapsed_s"],
        "process_wall_s": wall,
        "final_val_acc": result["val_acc"],
        "checks": [check.to_dict()],
    }


def _print_history(plan: AccuracyPlan, tta: dict[str, Any], device_type: str) -> None:
    rows = [
        [
            h["epoch"],
            f"{h['train_acc']:.1f}%",
            f"{h['val_acc']:.1f}%",
            f"{h['epoch_time_s']:.1f}",
            f"{h['img_per_s']:,.0f}",
            f"{h['since_start_s']:.1f}",
        ]
        for h in tta["history"]
    ]
    print(
        format_table(
            ["epoch", "train acc", "val acc", "epoch s", "img/s", "s since start"],
            rows,
            title=(
                f"Time to {plan.target:g}% validation accuracy: simple_cnn, synthetic "
                f"{plan.n_train} train / {plan.n_val} val, batch {plan.batch}, {plan.epochs} "
                f"epochs, trainer run() on {device_type} (fast loader, one-cycle lr)"
            ),
        )
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        raise SystemExit(_worker(sys.argv[1:]))
    raise SystemExit("bench.accuracy is started by `python -m bench`; see bench/__main__.py")
