"""Choosing the anomaly threshold: given, the course's default, or calibrated for a target FPR.

Calibration scores a held-out split of the normal images with the exported graph through
`service.scoring.model.load_model(...).score(...)`, the very code the stream worker runs, so the
threshold is calibrated on the numbers production will see. An image is an anomaly when its
similarity is strictly below the threshold.

>>> import numpy as np
>>> threshold_for_fpr(np.array([0.875, 0.5, 0.75, 0.625], dtype=np.float32), 0.25)
0.5625
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from service.errors import PixelwatchError
from service.scoring.images import Pixels
from service.scoring.model import load_model
from service.scoring.similarity import MetricName

DEFAULT_THRESHOLD: Final = 0.60  # the course: "a threshold of minimum 60%"
HOLDOUT_FRACTION: Final = 0.2

Method = Literal["given", "default", "fpr"]


class CalibrationError(PixelwatchError):
    """The requested false-positive rate cannot be calibrated on this data."""


@dataclass(frozen=True)
class Calibration:
    """The threshold a model ships with, and how it was chosen."""

    threshold: float
    method: Method
    fpr: float | None = None
    holdout: int = 0  # held-out images scored (fpr only)
    flagged: int = 0  # of those, how many the threshold flags

    def describe(self) -> str:
        if self.method == "given":
            return "given with --threshold"
        if self.method == "default":
            return "the course's default"
        return (
            f"calibrated for --fpr {self.fpr:g}: flags {self.flagged} of {self.holdout} "
            "held-out normal images"
        )


def fixed(threshold: float | None) -> Calibration:
    """The threshold given explicitly, or the course's 0.60."""
    if threshold is None:
        return Calibration(DEFAULT_THRESHOLD, "default")
    return Calibration(threshold, "given")


def holdout_size(count: int, fraction: float = HOLDOUT_FRACTION) -> int:
    """How many of `count` images are held out (at least one, and never all)."""
    return min(max(1, round(count * fraction)), count - 1)


def split_holdout(
    count: int, seed: int, fraction: float = HOLDOUT_FRACTION
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Seeded (train, held-out) index arrays, each sorted."""
    order = np.random.default_rng(seed).permutation(count)
    held = holdout_size(count, fraction)
    return np.sort(order[held:]), np.sort(order[:held])


def check_fpr_range(fpr: float) -> None:
    if not 0.0 < fpr < 1.0:
        raise CalibrationError(f"--fpr must be between 0 and 1, exclusive (got {fpr:g})")


def check_fpr(fpr: float, count: int, source: str) -> None:
    """Refuse a false-positive rate that `count` images cannot calibrate (before training)."""
    check_fpr_range(fpr)
    if count < 2:
        raise CalibrationError(
            f"--fpr needs at least 2 images, to train on some and hold out others; "
            f"{source} has {count}"
        )
    held = holdout_size(count)
    if fpr < 1.0 / held:
        needed = math.ceil(1.0 / fpr)
        hint = f"use --fpr >= {1.0 / held:.3g}" if held > 1 else "use --threshold"
        raise CalibrationError(
            f"--fpr {fpr:g} needs at least {needed} held-out images, but {source} has {count} "
            f"images and holds out {held} ({HOLDOUT_FRACTION:.0%}); {hint} or give more images"
        )


def threshold_for_fpr(similarities: NDArray[np.float32], fpr: float) -> float:
    """A threshold flagging round(fpr * n) of these similarities (fewer if they tie).

    It lies midway between the highest flagged and the lowest kept similarity, so that
    normal images a little below the held-out ones are not flagged at once.
    """
    ranked = np.sort(np.asarray(similarities, dtype=np.float32))
    count = len(ranked)
    flagged = min(max(1, round(fpr * count)), count - 1)
    below, kept = ranked[flagged - 1], ranked[flagged]
    threshold = (float(below) + float(kept)) / 2.0
    # The runtime compares float32 similarities with the threshold in float32; a midpoint
    # that rounds onto `below` would stop flagging it, so fall back to `kept` itself.
    if not np.float32(threshold) > below:
        threshold = float(kept)
    return threshold


def calibrate(model_path: Path, holdout: Pixels, fpr: float, metric: MetricName) -> Calibration:
    """Score the held-out images with the exported graph and pick the threshold for `fpr`."""
    scored = load_model(model_path).score(holdout, metric=metric)
    threshold = threshold_for_fpr(scored.similarity, fpr)
    flagged = dataclasses.replace(scored, threshold=threshold).anomaly
    return Calibration(threshold, "fpr", fpr, len(holdout), int(flagged.sum()))
