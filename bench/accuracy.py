"""Time to accuracy of ``python -m trainer --config jobs/configs/simple_cnn_synthetic.yaml`` on a
smaller synthetic set, from its metrics.jsonl: from the ``start`` record (data staged, model
built) to the first ``epoch`` record at the target, validation and checkpoints included."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, check, child_environ, format_table
from trainer.config import load_config
from trainer.metrics import read_metrics

CONFIG = "jobs/configs/simple_cnn_synthetic.yaml"


def time_to_accuracy(records: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """From metrics.jsonl records: epochs and seconds until val_acc >= target (None if never)."""
    start = next(r["time"] for r in records if r.get("kind") == "start")
    epochs = [r for r in records if r.get("kind") == "epoch"]
    hit = next((r for r in epochs if r["val_acc"] >= target), None)
    keys = ("epoch", "train_acc", "val_acc", "epoch_time_s", "img_per_s")
    return {
        "reached": hit is not None,
        "epochs": hit["epoch"] + 1 if hit else None,
        "seconds": hit["time"] - start if hit else None,
        "best_val_acc": max((r["val_acc"] for r in epochs), default=None),
        "history": [{k: r[k] for k in keys} | {"since_start_s": r["time"] - start} for r in epochs],
    }


def run_accuracy(
    n_train: int, n_val: int, epochs: int, target: float, work: Path, device_type: str
) -> list[dict[str, Any]]:
    items = [f"data_dir={work / 'data'}", f"synthetic_train={n_train}", f"synthetic_val={n_val}"]
    items += [f"epochs={epochs}", f"output_dir={work / 'run'}", "resume=never", "plot=false"]
    items += ["keep_checkpoints=1", "log_every=1000", "preempt_signal=none"]
    batch, t0 = load_config(str(REPO / CONFIG), items).batch_size, time.perf_counter()
    work.mkdir()
    with child_environ(device_type), open(work / "train.log", "wb") as log:
        cmd = [sys.executable, "-m", "trainer", "--config", CONFIG, *items]
        code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall, text = time.perf_counter() - t0, (work / "train.log").read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"trainer run failed (exit {code}):\n{text[-3000:]}")
    tta = time_to_accuracy(read_metrics(work / "run" / "metrics.jsonl"), target)
    cols = {"train_acc": "{:.1f}%", "val_acc": "{:.1f}%", "epoch_time_s": "{:.1f}"}
    cols |= {"img_per_s": "{:,.0f}", "since_start_s": "{:.1f}"}
    rows = [[h["epoch"], *(f.format(h[k]) for k, f in cols.items())] for h in tta["history"]]
    title = f"Time to {target:g}% validation accuracy: simple_cnn, synthetic {n_train} train / "
    title += f"{n_val} val, batch {batch}, {epochs} epochs, trainer on {device_type} ({CONFIG})"
    headers = ["epoch", "train acc", "val acc", "epoch s", "img/s", "s since start"]
    print(format_table(headers, rows, title=title))
    run_s = float(re.findall(r"Final: .* time=([\d.]+)s", text)[-1])  # the run's elapsed_s
    times = f"whole run {run_s:.1f} s, process wall {wall:.1f} s (incl. interpreter start and data"
    if tta["reached"]:
        reached = f"reached {target:g}% after {tta['epochs']} epoch(s), {tta['seconds']:.1f} s of "
        print(f"{reached}training (incl. validation + checkpoints); {times} generation)")
    else:
        print(f"did not reach {target:g}% in {epochs} epochs (best {tta['best_val_acc']:.1f}%)")
    note = f"{tta['epochs']} epoch(s), {tta['seconds']:.1f} s" if tta["reached"] else ""
    name = f"reaches {target:g}% val acc within {epochs} epochs"
    return [check(name, tta["best_val_acc"], target, "%", note=note)]
