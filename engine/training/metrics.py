"""Metrics log (CSV, appended across resumed runs) and a PNG plot of the loss and validation curves."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

METRICS_FILE = "metrics.csv"
PLOT_FILE = "curves.png"
COLUMNS = (
    "step",
    "epoch",
    "split",
    "loss",
    "contrastive",
    "matching",
    "captioning",
    "retrieval_accuracy",
    "t2m_mrr",
    "m2t_mrr",
    "learning_rate",
    "elapsed_seconds",
)


class MetricsLog:
    def __init__(self, directory: Path):
        self.path = directory / METRICS_FILE
        directory.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerow(COLUMNS)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after the checkpoint we resume from, so resumed curves do not double up."""
        rows = self.read()
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(row for row in rows if int(row["step"]) <= step)

    def write(self, row: Mapping[str, float | int | str | None]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown metric columns: {sorted(unknown)}")
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=COLUMNS).writerow({k: _fmt(row.get(k)) for k in COLUMNS})

    def read(self) -> list[dict[str, str]]:
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))


def _fmt(value: float | int | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def plot_curves(log: MetricsLog, out: Path | None = None) -> Path:
    """Training loss (and its parts) against step, with validation loss and in-batch retrieval accuracy."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    rows = log.read()
    out = out or log.path.with_name(PLOT_FILE)
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for split, style in (("train", "-"), ("validation", "o-")):
        selected = [r for r in rows if r["split"] == split and r["loss"]]
        steps = [int(r["step"]) for r in selected]
        for part in ("loss", "contrastive", "matching", "captioning"):
            values = [float(r[part]) if r[part] else float("nan") for r in selected]
            if selected and any(v == v for v in values):
                loss_axis.plot(steps, values, style, label=f"{split} {part}", markersize=3)
        accuracy = [
            (int(r["step"]), float(r["retrieval_accuracy"])) for r in selected if r["retrieval_accuracy"]
        ]
        if accuracy:
            accuracy_axis.plot(
                *zip(*accuracy, strict=True), style, label=f"{split} in-batch accuracy", markersize=3
            )
    for part in ("t2m_mrr", "m2t_mrr"):
        mrr = [(int(r["step"]), float(r[part])) for r in rows if r.get(part)]
        if mrr:
            accuracy_axis.plot(
                *zip(*mrr, strict=True), "s--", label=f"validation {part} (full set)", markersize=3
            )
    loss_axis.set(xlabel="step", ylabel="loss", title="losses")
    accuracy_axis.set(xlabel="step", ylabel="in-batch top-1 / full-set MRR", title="retrieval", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        if axis.lines:
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
