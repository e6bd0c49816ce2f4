"""The memory bank: latent codes of the training images, stored inside the scoring graph.

PatchCore's idea (anomalib), applied to the autoencoder's code space: remember the codes of
the normal training images, and call an image anomalous when its own code is far from all of
them. `train` stores every training code, or a coreset of them when there are more than
`MemorySettings.codes`; the graph computes the distance d from an image's code to the k-th
nearest stored code and turns it into two similarities:

With `--memory-features code+first-layer` the bank also stores each stored image's first
layer of encoder features (`Autoencoder.first_layer`), and d is the geometric mean of the two
nearest distances, sqrt(d_code * d_first): the code says which kind of image it is, the first
layer keeps the local detail the code compresses away (PatchCore's mid-level features).

- `memory` = 1 / (1 + d / scale). `scale` is fitted on the calibration images (below) as
  1.5 times the 99th percentile of their distances, so that the course's default threshold,
  0.60, flags an image farther from the bank than 99% of the calibration images. The map is
  strictly decreasing: 1 on a stored code (up to float32 rounding), 0.5 at d = scale,
  towards 0 far away.
- `combined`: Hamming h and memory m, each standardised with its mean and spread (standard
  deviation, at least `SPREAD_FLOOR`) on the calibration images, z = ((mean_h - h) / spread_h
  + (mean_m - m) / spread_m) / 2, mapped to [0, 1] by (1 - t / (1 + |t|)) / 2 with
  t = z - offset; `offset` puts 0.60 at the calibration images' 99th percentile of z too.

Calibration images: the held-out normal images when `train --fpr` holds some out; otherwise
the training images themselves, each measured against the bank without its own code
(leave-one-out), which imitates a new normal image. Both maps are monotone, so they change
no ranking of `memory` (its AUROC is that of the raw distance); they make the default
threshold meaningful and put the two scores of `combined` on one scale.

The coreset is greedy k-center selection (as in PatchCore): start from a seeded random code,
then repeatedly add the code farthest from those chosen; deterministic for a seed.

>>> codes = np.asarray([[0.0], [0.1], [5.0], [5.1], [9.0]], dtype=np.float32)
>>> greedy_coreset(codes, 3, seed=0).tolist()
[0, 2, 4]
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, get_args

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from model_export.calibrate import DEFAULT_THRESHOLD
from service.errors import PixelwatchError
from service.scoring.model import MemoryFeatures, MemoryInfo

DEFAULT_CODES: Final = 1024  # codes stored at most; the cost table in docs/benchmarks.md shows why
DEFAULT_K: Final = 1
SPREAD_FLOOR: Final = 0.01  # a similarity that barely varies on calibration is not infinitely sure
CALIBRATION_QUANTILE: Final = 0.99  # both maps put the default threshold (0.60) here
# memory = 1 / (1 + d / scale) equals DEFAULT_THRESHOLD at d = scale * _MEMORY_AT_THRESHOLD.
_MEMORY_AT_THRESHOLD: Final = 1.0 / DEFAULT_THRESHOLD - 1.0
# (1 - t / (1 + |t|)) / 2 equals DEFAULT_THRESHOLD at this t.
_SQUASH_AT_THRESHOLD: Final = -(2.0 * DEFAULT_THRESHOLD - 1.0) / (2.0 - 2.0 * DEFAULT_THRESHOLD)
_CHUNK: Final = 4096  # rows per distance block while fitting (bounds the memory used)

MEMORY_FEATURES: Final[tuple[MemoryFeatures, ...]] = get_args(MemoryFeatures)

Encode = Callable[[torch.Tensor], torch.Tensor]
Similarity = Callable[[torch.Tensor], torch.Tensor]


class MemoryBankError(PixelwatchError):
    """The memory bank cannot be built with these settings."""


@dataclass(frozen=True)
class MemorySettings:
    """How many codes to store at most, which neighbour to measure, the coreset's seed, and
    what the bank stores of each image."""

    codes: int = DEFAULT_CODES
    k: int = DEFAULT_K
    seed: int = 0
    features: MemoryFeatures = "code"

    def __post_init__(self) -> None:
        for name, flag in (("codes", "--memory-size"), ("k", "--memory-k")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MemoryBankError(f"{flag} must be a whole number >= 1 (got {value!r})")
        if self.features not in MEMORY_FEATURES:
            known = ", ".join(MEMORY_FEATURES)
            raise MemoryBankError(
                f"--memory-features must be one of {known} (got {self.features!r})"
            )


def greedy_coreset(codes: NDArray[np.floating], size: int, seed: int) -> NDArray[np.intp]:
    """Indices (sorted) of at most `size` codes chosen by greedy k-center selection.

    Every code is then within the coreset's covering radius of a chosen one. Fewer than
    `size` come back when the codes have fewer distinct values.
    """
    points = np.asarray(codes, dtype=np.float64)
    count = len(points)
    if size >= count:
        return np.arange(count)
    first = int(np.random.default_rng(seed).integers(count))
    chosen = [first]
    nearest = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < size:
        farthest = int(np.argmax(nearest))  # the lowest index among equals: deterministic
        if nearest[farthest] == 0.0:
            break  # every code is already stored exactly
        chosen.append(farthest)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[farthest], axis=1))
    return np.sort(np.asarray(chosen, dtype=np.intp))


class _Stored(nn.Module):
    """Stored points (codes, or first layers) and the distance to their k-th nearest.

    Squared distances use the expanded form |z|^2 - 2 z.b + |b|^2: one matrix product
    against the stored points, which is what makes a large bank affordable (the cost table in
    docs/benchmarks.md). Its float32 rounding leaves a stored point a distance of about 1e-3
    of the points' size instead of 0; the points are centred on their mean to keep that small.
    """

    def __init__(self, points: NDArray[np.floating]) -> None:
        super().__init__()
        stored = torch.as_tensor(np.asarray(points, dtype=np.float32))
        centre = stored.mean(dim=0)
        self.centre: torch.Tensor
        self.stored: torch.Tensor
        self.stored_norms: torch.Tensor
        self.register_buffer("centre", centre)
        # Stored transposed, [size, n]: the matrix product and the gather then read the same
        # constant, and the exported graph holds the points once.
        self.register_buffer("stored", (stored - centre).T.contiguous())
        self.register_buffer("stored_norms", (stored - centre).square().sum(dim=1))

    @property
    def points(self) -> torch.Tensor:
        """The stored points [n, size], as given (not centred)."""
        return self.stored.T + self.centre

    def kth(self, points: torch.Tensor, k: int) -> torch.Tensor:
        """Euclidean distance from each point to its k-th nearest stored point."""
        z = points - self.centre
        # |b|^2 - 2 z.b is one Gemm with a bias; |z|^2 is the same for every b of a row, so
        # it is added after the minimum (or TopK), over [batch] instead of [batch, n].
        partial = torch.addmm(self.stored_norms, z, self.stored, alpha=-2.0)
        if k == 1:  # ReduceMin: TopK and ArgMin cost several times more
            nearest = partial.amin(dim=1)
        else:
            nearest = torch.topk(partial, k, dim=1, largest=False).values[:, -1]
        return (nearest + z.square().sum(dim=1)).clamp_min(0.0).sqrt()


class MemoryBank(_Stored):
    """codes [batch, c] and the Hamming similarity [batch] -> (memory, combined).

    The stored codes are this module's own points (so a stored code scores memory 0.999 or so
    rather than exactly 1, see `_Stored`); first-layer features, when stored, are
    `first_bank`'s.
    """

    def __init__(
        self,
        bank: NDArray[np.floating],
        info: MemoryInfo,
        first: NDArray[np.floating] | None = None,
    ) -> None:
        super().__init__(bank)
        # The stored images' first layers of features (row i is code i's image), or None.
        self.first_bank = None if first is None else _Stored(first)
        self.info = info

    @property
    def codes(self) -> torch.Tensor:
        """The stored codes [n, code], as given (not centred)."""
        return self.points

    def distance(self, codes: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        """Each image's distance to the bank: to its code's k-th nearest stored code; with
        first-layer features stored, the geometric mean of that and the same distance between
        first layers (`first`, required then)."""
        k = self.info.k
        distance = self.kth(codes, k)
        if self.first_bank is None:
            return distance
        if first is None:
            raise MemoryBankError("this memory bank also needs the images' first layers")
        return (distance * self.first_bank.kth(first, k)).sqrt()

    def forward(
        self,
        codes: torch.Tensor,
        reconstruction: torch.Tensor,
        first: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        info = self.info
        memory = 1.0 / (1.0 + self.distance(codes, first) / info.scale)
        z = (info.reconstruction_mean - reconstruction) / info.reconstruction_spread
        z = z + (info.memory_mean - memory) / info.memory_spread
        t = z / 2.0 - info.offset
        return memory, 0.5 * (1.0 - t / (1.0 + t.abs()))


def fit_memory(
    encode: Encode,
    hamming: Similarity,
    train: NDArray[np.float32],
    calibration: NDArray[np.float32] | None,
    settings: MemorySettings,
    first_layer: Encode | None = None,
) -> MemoryBank:
    """Store the training codes (or their coreset) and fit both maps on the calibration images.

    `encode` gives latent codes and `hamming` the Hamming similarity of the scoring graph
    (same reconstruction convention), both for a batch of pixels; `calibration` are held-out
    normal images, or None (or empty) to calibrate leave-one-out on the training images.
    `first_layer` gives the encoder's first features, needed when the settings store them.
    """
    with_first = settings.features == "code+first-layer"
    if with_first and first_layer is None:
        raise MemoryBankError("--memory-features code+first-layer needs the encoder's first layer")
    if len(train) == 0:
        raise MemoryBankError("the memory bank needs at least one training image")
    held_out = calibration is not None and len(calibration) > 0
    calibrating = calibration if calibration is not None and held_out else train
    with torch.no_grad():
        codes = encode(torch.from_numpy(np.ascontiguousarray(train))).numpy()
        chosen = greedy_coreset(codes, settings.codes, settings.seed)
        k = min(settings.k, len(chosen))
        pixels = torch.from_numpy(np.ascontiguousarray(calibrating))
        similarity = hamming(pixels).numpy().astype(np.float64)
        if held_out:
            distances = kth_distances(encode(pixels).numpy(), codes[chosen], k)
        else:
            distances = kth_distances(codes, codes[chosen], k, stored_rows=chosen)
        first: NDArray[np.float32] | None = None
        if with_first:
            assert first_layer is not None
            first = first_layer(torch.from_numpy(np.ascontiguousarray(train))).numpy()
            if held_out:
                apart = kth_distances(first_layer(pixels).numpy(), first[chosen], k)
            else:
                apart = kth_distances(first, first[chosen], k, stored_rows=chosen)
            distances = np.sqrt(distances * apart)  # as MemoryBank.distance
    measured = np.isfinite(distances)  # leave-one-out: no k other codes for a lone image
    if measured.any():
        distances, similarity = distances[measured], similarity[measured]
    else:
        distances = np.zeros(len(similarity))
    scale = _scale(distances)
    memory = 1.0 / (1.0 + distances / scale)
    h_mean, h_spread = float(np.mean(similarity)), _spread(similarity)
    m_mean, m_spread = float(np.mean(memory)), _spread(memory)
    z = ((h_mean - similarity) / h_spread + (m_mean - memory) / m_spread) / 2.0
    info = MemoryInfo(
        codes=len(chosen),
        training_codes=len(codes),
        code_size=codes.shape[1],
        k=k,
        seed=settings.seed,
        scale=scale,
        calibration="held-out" if held_out else "leave-one-out",
        calibration_images=len(similarity),
        reconstruction_mean=h_mean,
        reconstruction_spread=h_spread,
        memory_mean=m_mean,
        memory_spread=m_spread,
        offset=float(np.quantile(z, CALIBRATION_QUANTILE)) - _SQUASH_AT_THRESHOLD,
        features=settings.features,
    )
    return MemoryBank(codes[chosen], info, None if first is None else first[chosen])


def kth_distances(
    points: NDArray[np.floating],
    stored: NDArray[np.floating],
    k: int,
    *,
    stored_rows: NDArray[np.intp] | None = None,
) -> NDArray[np.float64]:
    """Each point's Euclidean distance to its k-th nearest stored code (float64).

    With `stored_rows` (the rows of `points` that are stored, in `stored` order), a stored
    point does not count itself: inf when no k others are stored.
    """
    points = np.asarray(points, dtype=np.float64)
    stored = np.asarray(stored, dtype=np.float64)
    column = np.full(len(points), -1)
    if stored_rows is not None:
        column[stored_rows] = np.arange(len(stored_rows))
    norms = (stored**2).sum(axis=1)
    result = np.empty(len(points))
    for start in range(0, len(points), _CHUNK):
        block = points[start : start + _CHUNK]
        squared = (block**2).sum(axis=1)[:, None] - 2.0 * block @ stored.T + norms
        distances = np.sqrt(np.maximum(squared, 0.0))
        own = column[start : start + _CHUNK]
        rows = np.flatnonzero(own >= 0)
        distances[rows, own[rows]] = np.inf
        result[start : start + len(block)] = np.partition(distances, k - 1, axis=1)[:, k - 1]
    return result


def _spread(values: NDArray[np.float64]) -> float:
    return max(float(np.std(values)), SPREAD_FLOOR)


def _scale(distances: NDArray[np.float64]) -> float:
    """1.5 x the 99th percentile (memory is 0.60 there); 1.0 when all distances are 0."""
    edge = float(np.quantile(distances, CALIBRATION_QUANTILE))
    return edge / _MEMORY_AT_THRESHOLD if edge > 0 and math.isfinite(edge) else 1.0
