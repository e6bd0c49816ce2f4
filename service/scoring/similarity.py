"""Reference similarity metrics between inputs and reconstructions (numpy).

Every metric maps a pair of images with pixels in [0, 1] to [0, 1], where 1 means identical.
The ONNX scoring graph computes the same formulas; these are the reference the graph is
tested against, and the fallback used by tools that only have arrays.

>>> import numpy as np
>>> square = np.zeros(64); square[[9, 10]] = 1.0
>>> float(hamming(square[None], square[None])[0])
1.0
"""

from collections.abc import Callable
from typing import Final, Literal, get_args

import numpy as np
from numpy.typing import NDArray

MetricName = Literal["hamming", "ruzicka", "dice", "cosine"]
METRICS: Final[tuple[MetricName, ...]] = get_args(MetricName)

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


REFERENCE: Final[dict[MetricName, Callable[[Batch, Batch], NDArray[np.float64]]]] = {
    "hamming": hamming,
    "ruzicka": ruzicka,
    "dice": dice,
    "cosine": cosine,
}


def all_scores(inputs: Batch, outputs: Batch) -> dict[MetricName, NDArray[np.float64]]:
    """Every metric for a batch, keyed by name."""
    return {name: fn(inputs, outputs) for name, fn in REFERENCE.items()}
