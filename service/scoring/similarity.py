"""Reference similarity metrics (numpy), and the names of every metric a scoring graph emits.

Every metric maps an image to [0, 1], where 1 means "like the training images". The first
four compare an input with its reconstruction; the ONNX scoring graph computes the same
formulas, and these are the reference the graph is tested against:

- `hamming`, `ruzicka`, `dice`, `cosine`: input against reconstruction. Dice is a monotone
  function of Ruzicka (D = 2R / (1 + R)), so the two rank images identically (same AUROC);
  only their thresholds differ (`EQUIVALENT`).

The other two come from the graph's memory bank of latent codes (model_export.memory):

- `memory`: the distance d from the image's latent code to the k-th nearest stored code,
  mapped to 1 / (1 + d / scale) (`memory_similarity`);
- `combined`: Hamming and memory similarity, each standardised on the calibration images,
  averaged, and mapped to [0, 1] (`combined_similarity`).

`scale` and the standardisation come from the model's metadata (`MemoryInfo`); the
docs/training.md ("Similarity metrics") documents how they are fitted.

>>> import numpy as np
>>> square = np.zeros(64); square[[9, 10]] = 1.0
>>> float(hamming(square[None], square[None])[0])
1.0
>>> r = ruzicka(square[None], np.zeros((1, 64)) + 0.5)
>>> bool(np.allclose(dice(square[None], np.zeros((1, 64)) + 0.5), 2 * r / (1 + r)))
True
"""

from collections.abc import Callable
from typing import Final, Literal, get_args

import numpy as np
from numpy.typing import NDArray

ReconstructionMetric = Literal["hamming", "ruzicka", "dice", "cosine"]
MemoryMetric = Literal["memory", "combined"]
MetricName = Literal[ReconstructionMetric, MemoryMetric]
RECONSTRUCTION_METRICS: Final[tuple[ReconstructionMetric, ...]] = get_args(ReconstructionMetric)
MEMORY_METRICS: Final[tuple[MemoryMetric, ...]] = get_args(MemoryMetric)
# Every output of a scoring graph, in the graph's output order (after the reconstruction).
METRICS: Final[tuple[MetricName, ...]] = (*RECONSTRUCTION_METRICS, *MEMORY_METRICS)
# Metrics that order images exactly as another one does (a monotone function of it).
EQUIVALENT: Final[dict[MetricName, MetricName]] = {"dice": "ruzicka"}
# Metrics with a ranking of their own (not EQUIVALENT to another), in METRICS order.
RANKED_METRICS: Final[tuple[MetricName, ...]] = tuple(m for m in METRICS if m not in EQUIVALENT)
# The reconstruction similarity that `combined` standardises and averages with `memory`.
COMBINED_RECONSTRUCTION: Final[ReconstructionMetric] = "hamming"

Batch = NDArray[np.floating]


def _as_batch(x: Batch) -> NDArray[np.float64]:
    return np.atleast_2d(np.asarray(x, dtype=np.float64))


def hamming(inputs: Batch, outputs: Batch) -> NDArray[np.float64]:
    """1 - mean |I - O| per row (the course's Hamming similarity, generalised to gray)."""
    i, o = _as_batch(inputs), _as_batch(outputs)
    return np.asarray(1.0 - np.abs(i - o).mean(axis=1))


def ruzicka(inputs: Batch, outputs: Batch) -> NDArray[np.float64]:
    """sum min(I, O) / sum max(I, O); two blank images are identical (1.0)."""
    i, o = _as_batch(inputs), _as_batch(outputs)
    low, high = np.minimum(i, o).sum(axis=1), np.maximum(i, o).sum(axis=1)
    return np.where(high > 0, low / np.where(high > 0, high, 1.0), 1.0)


def dice(inputs: Batch, outputs: Batch) -> NDArray[np.float64]:
    """2 sum min(I, O) / sum(I + O); two blank images are identical (1.0)."""
    i, o = _as_batch(inputs), _as_batch(outputs)
    low, total = np.minimum(i, o).sum(axis=1), (i + o).sum(axis=1)
    return np.where(total > 0, 2.0 * low / np.where(total > 0, total, 1.0), 1.0)


def cosine(inputs: Batch, outputs: Batch) -> NDArray[np.float64]:
    """I.O / (|I| |O|); 1.0 when both are blank, 0.0 when only one is."""
    i, o = _as_batch(inputs), _as_batch(outputs)
    norms = np.linalg.norm(i, axis=1) * np.linalg.norm(o, axis=1)
    both_blank = (i.sum(axis=1) == 0) & (o.sum(axis=1) == 0)
    value = np.where(norms > 0, (i * o).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_blank, 1.0, np.clip(value, 0.0, 1.0))


REFERENCE: Final[dict[ReconstructionMetric, Callable[[Batch, Batch], NDArray[np.float64]]]] = {
    "hamming": hamming,
    "ruzicka": ruzicka,
    "dice": dice,
    "cosine": cosine,
}


def all_scores(inputs: Batch, outputs: Batch) -> dict[ReconstructionMetric, NDArray[np.float64]]:
    """Every reconstruction metric for a batch, keyed by name."""
    return {name: fn(inputs, outputs) for name, fn in REFERENCE.items()}


def memory_similarity(distance: Batch, scale: float) -> NDArray[np.float64]:
    """1 / (1 + d / scale): 1 on a stored code, 0.5 at `scale`, towards 0 far away.

    Strictly decreasing in d and never 0 in float32 for any finite distance, so far-away
    images keep distinct scores (a ranking needs no ties).
    """
    return np.asarray(1.0 / (1.0 + np.asarray(distance, dtype=np.float64) / scale))


def standardised(similarity: Batch, mean: float, spread: float) -> NDArray[np.float64]:
    """How many calibration spreads below the calibration mean a similarity lies."""
    return np.asarray((mean - np.asarray(similarity, dtype=np.float64)) / spread)


def squash(z: Batch) -> NDArray[np.float64]:
    """(1 - z / (1 + |z|)) / 2: a strictly decreasing map of R onto (0, 1), 0.5 at z = 0.

    A rational function rather than a logistic one: its tail falls like 1 / z, so scores many
    spreads out stay distinct in float32 instead of underflowing to a tie at 0.
    """
    z = np.asarray(z, dtype=np.float64)
    return np.asarray(0.5 * (1.0 - z / (1.0 + np.abs(z))))


def combined_similarity(
    reconstruction: Batch,
    memory: Batch,
    *,
    reconstruction_mean: float,
    reconstruction_spread: float,
    memory_mean: float,
    memory_spread: float,
    offset: float,
) -> NDArray[np.float64]:
    """squash(z - offset), z the mean of the two standardised similarities (equal weights)."""
    z = standardised(reconstruction, reconstruction_mean, reconstruction_spread)
    z = z + standardised(memory, memory_mean, memory_spread)
    return squash(z / 2.0 - offset)
