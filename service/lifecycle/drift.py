"""Drift of live similarities against the model's reference histogram, over a rolling window.

The statistic is the two-sample Kolmogorov-Smirnov distance on the binned data: the largest
gap between the share of live images and the share of reference images below any bin edge.
We chose it over the population stability index (PSI) because:

- A model's reference histogram is narrow (normal images score close to 1) and most of its
  bins are empty, while drifted or anomalous live images land precisely in those empty bins.
  PSI divides by the reference share there, so its value is decided by the epsilon chosen to
  avoid a division by zero. The KS distance needs no epsilon.
- It reads in the unit of the anomaly rate: at any threshold, the share of live images
  flagged differs from the share of normal reference images flagged by at most the distance.
  0.2 means that at some similarity, 20 points more (or fewer) of the live images fall below
  it than of the normal images at export time.
- It is bounded in [0, 1] and changes little with the binning (bins of 0.01 keep every
  distinct Hamming value of 8x8 binary images apart), so one alert threshold fits all models.

Its weakness, lower sensitivity in the far tails, matters less here: the threshold sits in
the body of the low tail, where the distance is measured.

The window is a list of `Slot`s of `slot_seconds` each (the window divided in `SLOTS`); every
slot holds the binned similarities, image and anomaly counts, and the shadow agreement tally.

>>> import numpy as np
>>> reference = np.zeros(100, np.int64); reference[95] = 10
>>> live = np.zeros(100, np.int64); live[95] = 8; live[40] = 2
>>> round(ks_distance(reference, live), 3)
0.2
"""

import math
from typing import Annotated, Final

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from service.scoring.reference import HISTOGRAM_BINS

SLOTS: Final = 60
"""Slots per window: the window slides by a 60th of its length."""
KS_CRITICAL_1PCT: Final = 1.628
"""c(0.01) of the two-sample KS test: D above c * sqrt((n + m) / (n * m)) is significant at
1% (conservative on binned data, where ties only lower D)."""

Count = Annotated[int, Field(ge=0)]


def ks_distance(reference: NDArray[np.int64], live: NDArray[np.int64]) -> float:
    """max over bin edges of |F_reference - F_live|, each an empirical CDF of binned counts."""
    ref_total, live_total = int(reference.sum()), int(live.sum())
    if ref_total == 0 or live_total == 0:
        raise ValueError("both histograms need at least one image")
    gap = np.cumsum(reference) / ref_total - np.cumsum(live) / live_total
    return float(np.abs(gap).max())


def ks_critical(reference_images: int, live_images: int) -> float:
    """The distance above which the two samples differ at the 1% level."""
    n, m = reference_images, live_images
    return KS_CRITICAL_1PCT * math.sqrt((n + m) / (n * m))


def suggested_threshold(live: NDArray[np.int64], target: float) -> float | None:
    """The highest bin edge t such that at most `target` of the live images score below t:
    the threshold that would flag the model's calibrated false-positive rate of this window,
    to the histogram's resolution (0.01). None for an empty window."""
    total = int(live.sum())
    if total == 0:
        return None
    below = np.concatenate([[0], np.cumsum(live)]) / total  # below[k]: share under edge k
    edge = int(np.flatnonzero(below <= target + 1e-12).max())
    return round(min(edge, HISTOGRAM_BINS) / HISTOGRAM_BINS, 10)


class ShadowTally(BaseModel):
    """Verdicts of a shadow model beside the live one, over the same images."""

    model_config = ConfigDict(extra="forbid")

    version: str
    images: Count = 0
    agree: Count = 0
    live_flagged: Count = 0
    shadow_flagged: Count = 0

    def add(self, other: "ShadowTally") -> None:
        self.images += other.images
        self.agree += other.agree
        self.live_flagged += other.live_flagged
        self.shadow_flagged += other.shadow_flagged


class Tally(BaseModel):
    """What a stretch of scored images adds to a window (sparse bins: most are empty)."""

    model_config = ConfigDict(extra="forbid")

    images: Count = 0
    anomalies: Count = 0
    bins: dict[int, Count] = Field(default_factory=dict)
    shadow: dict[str, ShadowTally] = Field(default_factory=dict)  # by shadow sha256

    def add_counts(self, counts: NDArray[np.int64], anomalies: int) -> None:
        for index in np.flatnonzero(counts).tolist():
            self.bins[index] = self.bins.get(index, 0) + int(counts[index])
        self.images += int(counts.sum())
        self.anomalies += anomalies

    def add(self, other: "Tally") -> None:
        for index, count in other.bins.items():
            self.bins[index] = self.bins.get(index, 0) + count
        self.images += other.images
        self.anomalies += other.anomalies
        for sha, tally in other.shadow.items():
            self.shadow.setdefault(sha, ShadowTally(version=tally.version)).add(tally)

    def dense(self) -> NDArray[np.int64]:
        counts = np.zeros(HISTOGRAM_BINS, np.int64)
        for index, count in self.bins.items():
            if 0 <= index < HISTOGRAM_BINS:
                counts[index] += count
        return counts


class Slot(Tally):
    start: float  # epoch seconds, a multiple of the slot length


class ModelRef(BaseModel):
    """The live model a window belongs to, with what drift needs of its metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    sha256: str
    metric: str
    threshold: float
    reference: list[Count] | None = None  # the reference histogram of `metric`, if any
    reference_source: str | None = None
    fpr: float | None = None


class Chunk(BaseModel):
    """What one worker sends for one model every few seconds: its tally since the last."""

    model_config = ConfigDict(extra="forbid")

    model: ModelRef
    worker: str
    seq: int = Field(ge=0)  # per worker: a chunk read twice (after a crash) counts once
    at: float  # epoch seconds at the end of the chunk
    tally: Tally


class Window(BaseModel):
    """A model's rolling window: the value of the drift table, keyed by the model's sha256."""

    model_config = ConfigDict(extra="forbid")

    model: ModelRef
    slot_seconds: float = Field(gt=0)
    slots: list[Slot] = Field(default_factory=list)
    workers: dict[str, float] = Field(default_factory=dict)  # worker -> time of its last chunk
    seen: dict[str, int] = Field(default_factory=dict)  # worker -> seq of its last chunk

    def add(self, chunk: Chunk) -> bool:
        """Add `chunk` to its slot; False (and nothing added) for a chunk seen before."""
        if chunk.seq <= self.seen.get(chunk.worker, -1):
            return False
        self.seen[chunk.worker] = chunk.seq
        self.workers[chunk.worker] = chunk.at
        self.model = chunk.model  # the newest say on threshold and metric
        start = math.floor(chunk.at / self.slot_seconds) * self.slot_seconds
        for slot in self.slots:
            if slot.start == start:
                slot.add(chunk.tally)
                break
        else:
            slot = Slot(start=start)
            slot.add(chunk.tally)
            self.slots.append(slot)
            self.slots.sort(key=lambda s: s.start)
        return True

    def expire(self, now: float) -> None:
        """Forget slots that ended more than a window ago."""
        oldest = now - self.slot_seconds * (SLOTS + 1)
        self.slots = [s for s in self.slots if s.start > oldest]
        self.workers = {w: at for w, at in self.workers.items() if at > oldest}
        self.seen = {w: seq for w, seq in self.seen.items() if w in self.workers}

    def total(self, now: float) -> Tally:
        """The window's slots summed, the ones that ended more than a window ago left out."""
        total = Tally()
        oldest = now - self.slot_seconds * (SLOTS + 1)
        for slot in self.slots:
            if slot.start > oldest:
                total.add(slot)
        return total


class Summary(BaseModel):
    """What the metrics and `pixelwatch model status` show of a window."""

    version: str
    images: int
    anomaly_rate: float | None
    drift: float | None  # None: no reference histogram, or too few images
    critical: float | None
    suggested_threshold: float | None
    shadow: dict[str, ShadowTally]


def summarise(window: Window, now: float, min_images: int) -> Summary:
    total = window.total(now)
    model = window.model
    counts = total.dense()
    drift = critical = suggested = None
    enough = total.images >= min_images and total.images > 0
    if enough and model.reference is not None and sum(model.reference) > 0:
        reference = np.asarray(model.reference, np.int64)
        drift = ks_distance(reference, counts)
        critical = ks_critical(int(reference.sum()), total.images)
    if enough and model.fpr is not None:
        suggested = suggested_threshold(counts, model.fpr)
    return Summary(
        version=model.version,
        images=total.images,
        anomaly_rate=total.anomalies / total.images if total.images else None,
        drift=drift,
        critical=critical,
        suggested_threshold=suggested,
        shadow=total.shadow,
    )
