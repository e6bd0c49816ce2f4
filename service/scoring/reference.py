"""What a model carries from export time so that the worker can check it in service.

- `GoldenImages`: a few images and the similarities the exported graph gave them. A worker
  scores them again before it swaps a model in (the self-test): a graph that was damaged,
  or that this runtime computes differently, is refused.
- `ReferenceHistogram`: the similarities of normal images (the held-out split when there is
  one, else the training images) in `HISTOGRAM_BINS` equal bins over [0, 1], for every
  metric. Live similarities are binned the same way, and drift is measured against it.

Both are optional metadata: a model exported without them loads, and the self-test and
drift report "no reference" for it instead of failing.

>>> import numpy as np
>>> histogram(np.array([0.0, 0.004, 0.5, 1.0], dtype=np.float32)).nonzero()[0].tolist()
[0, 50, 99]
"""

from typing import Annotated, Final, Literal, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

HISTOGRAM_BINS: Final = 100
"""Bins of width 0.01: fine enough to keep the 65 distinct Hamming values of an 8x8 binary
image apart, coarse enough that a window of them is a small message."""
GOLDEN_TOLERANCE: Final = 1e-4
"""How far a golden image's similarity may move between export and service (onnxruntime
builds and thread counts differ in the last float32 bits, never by this much)."""

Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Score = Annotated[float, Field(allow_inf_nan=False)]


def bin_index(similarity: NDArray[np.floating]) -> NDArray[np.intp]:
    """The bin of each similarity. Computed in float32, the precision the graph and the
    threshold comparison use, so a similarity that equals a bin edge lands above it."""
    scaled = np.asarray(similarity, dtype=np.float32) * np.float32(HISTOGRAM_BINS)
    index: NDArray[np.intp] = np.clip(np.floor(scaled), 0, HISTOGRAM_BINS - 1).astype(np.intp)
    return index


def histogram(similarity: NDArray[np.floating]) -> NDArray[np.int64]:
    """Counts per bin (`HISTOGRAM_BINS` of them) of a batch of similarities."""
    return np.bincount(bin_index(similarity), minlength=HISTOGRAM_BINS).astype(np.int64)


class GoldenImages(BaseModel):
    """Images and the similarity of each under every metric the graph computed at export."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pixels: list[list[Unit]] = Field(min_length=1)
    # Keyed by metric name as a plain string: a model from a build with other metrics still
    # loads, and only the metrics this runtime knows are compared.
    scores: dict[str, list[Score]] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_score_per_image(self) -> Self:
        sizes = {len(row) for row in self.pixels}
        if len(sizes) != 1:
            raise ValueError("golden images differ in size")
        for metric, values in self.scores.items():
            if len(values) != len(self.pixels):
                raise ValueError(
                    f"golden scores for {metric}: {len(values)} values for "
                    f"{len(self.pixels)} images"
                )
        return self

    def array(self) -> NDArray[np.float32]:
        return np.asarray(self.pixels, dtype=np.float32)


class ReferenceHistogram(BaseModel):
    """Similarities of normal images at export time, binned, per metric."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["held-out", "training"]
    images: int = Field(gt=0)
    counts: dict[str, list[Annotated[int, Field(ge=0)]]] = Field(min_length=1)
    fpr: Unit = Field(
        description="share of these images the model's own metric and threshold flag: its "
        "false-positive rate on normal data, the target of a suggested threshold"
    )

    @model_validator(mode="after")
    def _complete(self) -> Self:
        for metric, counts in self.counts.items():
            if len(counts) != HISTOGRAM_BINS:
                raise ValueError(f"histogram for {metric} has {len(counts)} bins, not 100")
            if sum(counts) != self.images:
                raise ValueError(
                    f"histogram for {metric} counts {sum(counts)} images, not {self.images}"
                )
        return self

    def of(self, metric: str) -> NDArray[np.int64] | None:
        counts = self.counts.get(metric)
        return None if counts is None else np.asarray(counts, dtype=np.int64)
