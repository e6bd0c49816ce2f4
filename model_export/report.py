"""A one-page PNG report next to the model: loss curves, reconstructions, similarity histogram.

The loss panel shows the training loss of every epoch run and, when training held images out
for early stopping, their reconstruction loss beside it, with a line at the epoch whose
weights were kept and the epoch where training stopped.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # an Agg figure without pyplot's global state
from numpy.typing import NDArray

from service.scoring.images import ImageShape, Pixels
from service.scoring.similarity import MetricName

MAX_EXAMPLES: Final = 6


@dataclass(frozen=True, kw_only=True)
class ReportData:
    losses: Sequence[float]  # training loss per epoch run
    holdout_losses: Sequence[float] = ()  # early-stopping images' loss per epoch (or none)
    kept_epoch: int = 0  # whose weights the model carries (0: the last)
    max_epochs: int = 0  # --epochs (0: as many as were run)
    inputs: Pixels  # a handful of training images
    reconstructions: NDArray[np.float32]  # the graph's reconstructions of `inputs`
    similarities: NDArray[np.float32]  # of the held-out (or training) images
    similarities_of: str  # "held-out" or "training"
    threshold: float
    metric: MetricName
    shape: ImageShape
    title: str


def report_path(model: Path) -> Path:
    """`MODEL.report.png` beside `MODEL.onnx`."""
    return model.with_suffix(".report.png")


def write_report(path: Path, data: ReportData) -> Path:
    # matplotlib narrates its font search at DEBUG level (thousands of lines under -v).
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.INFO)
    try:
        return _draw(path, data)
    finally:
        font_log.setLevel(level)


def _draw(path: Path, data: ReportData) -> Path:
    figure = draw_report(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    return path


def draw_report(data: ReportData) -> Figure:
    examples = min(MAX_EXAMPLES, len(data.inputs))
    columns = max(examples, 2)
    figure = Figure(figsize=(2.0 * max(columns, 4), 7.5), layout="constrained")
    figure.suptitle(data.title)
    grid = figure.add_gridspec(3, columns, height_ratios=[2.2, 1.0, 1.0])

    _draw_losses(figure.add_subplot(grid[0, : columns // 2]), data)

    histogram_axes = figure.add_subplot(grid[0, columns // 2 :])
    histogram_axes.hist(data.similarities, bins=min(40, max(5, len(data.similarities))))
    histogram_axes.axvline(1.0, color="grey", linewidth=0.5)
    histogram_axes.axvline(data.threshold, color="red", linestyle="--")
    histogram_axes.set(
        title=f"{data.metric} similarity, {data.similarities_of} images",
        xlabel=f"{data.metric} (anomaly if < {data.threshold:.4g})",
        ylabel="images",
        xlim=(max(0.0, min(float(np.min(data.similarities)), data.threshold) - 0.05), 1.0),
    )

    for row, (images, label) in enumerate(
        ((data.inputs, "training image"), (data.reconstructions, "reconstruction")), start=1
    ):
        for column in range(examples):
            axes = figure.add_subplot(grid[row, column])
            picture = np.asarray(images[column]).reshape(data.shape.height, data.shape.width)
            axes.imshow(picture, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(label)
    return figure


def _draw_losses(axes: Axes, data: ReportData) -> None:
    run = len(data.losses)
    epochs = np.arange(1, run + 1)
    axes.plot(epochs, np.maximum(np.asarray(data.losses), 1e-12), label="training")
    axes.set_yscale("log")
    if not data.holdout_losses:
        axes.set(title="training loss", xlabel="epoch", ylabel="mean loss")
        return
    held = np.maximum(np.asarray(data.holdout_losses), 1e-12)
    axes.plot(np.arange(1, len(held) + 1), held, label="held-out (early stopping)")
    kept = data.kept_epoch or run
    axes.axvline(kept, color="green", linestyle="--", linewidth=1, label=f"kept: epoch {kept}")
    if run < data.max_epochs:
        axes.axvline(run, color="red", linestyle=":", linewidth=1, label=f"stopped: epoch {run}")
        title = f"loss: stopped early at epoch {run} of {data.max_epochs}"
    else:
        title = f"loss: ran all {run} epochs"
    axes.set(title=title, xlabel="epoch", ylabel="mean loss")
    axes.legend(loc="upper right", fontsize="small")
