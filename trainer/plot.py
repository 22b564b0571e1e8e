"""Loss / accuracy curves from ``metrics.jsonl``.

    python -m trainer.plot RUN_DIR [--out PATH]

writes RUN_DIR/curves.png (matplotlib, Agg backend: no display needed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainer.files import atomic_path
from trainer.metrics import read_metrics

__all__ = ["plot_run"]


def plot_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    records = read_metrics(run / "metrics.jsonl")
    steps = [r for r in records if r.get("kind") == "train"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        ax_loss.plot(
            [r["step"] for r in steps],
            [r["loss"] for r in steps],
            lw=1,
            label="train (running, smoothed labels)",
        )
    if epochs:
        ax_loss.plot(
            [r["step"] for r in epochs], [r["val_loss"] for r in epochs], "o-", label="val"
        )
        ax_acc.plot(
            [r["epoch"] + 1 for r in epochs], [r["train_acc"] for r in epochs], "o-", label="train"
        )
        ax_acc.plot(
            [r["epoch"] + 1 for r in epochs], [r["val_acc"] for r in epochs], "o-", label="val"
        )
    ax_loss.set(xlabel="step", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    dest = Path(out) if out else run / "curves.png"
    # the temp name has no image extension: name the format (PNG, whatever --out ends with)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("run_dir", help="a run's output_dir (holds metrics.jsonl)")
    ap.add_argument("--out", help="output PNG (default RUN_DIR/curves.png)")
    args = ap.parse_args(argv)
    if not (Path(args.run_dir) / "metrics.jsonl").is_file():
        print(f"error: {args.run_dir}/metrics.jsonl not found", file=sys.stderr)
        return 2
    print(f"Wrote {plot_run(args.run_dir, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
