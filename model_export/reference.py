"""The reference data a model ships for checks in service (service/scoring/reference.py).

`with_reference` runs after calibration, on the exported file, through the runtime's own
`load_model(...).score(...)`: the golden scores and the histogram are exactly what the
worker will compute for the same images.
"""

from pathlib import Path
from typing import Final

import numpy as np

from service.scoring.images import Pixels
from service.scoring.model import ModelMetadata, load_model
from service.scoring.reference import GoldenImages, ReferenceHistogram, histogram

GOLDEN_NORMAL: Final = 6
GOLDEN_RANDOM: Final = 2
GOLDEN_MAX_PIXELS: Final = 16_384
"""Pixels stored for the golden images at most: large images get fewer of them (at least
two), so the metadata stays small."""


def golden_pixels(normal: Pixels, mode: str, seed: int) -> Pixels:
    """A few normal images, evenly spread over the set, and seeded random ones (binary
    noise in binary mode, uniform gray in gray mode), so that the self-test sees both
    verdicts."""
    size = normal.shape[1]
    budget = max(2, min(GOLDEN_NORMAL + GOLDEN_RANDOM, GOLDEN_MAX_PIXELS // size))
    randoms = min(GOLDEN_RANDOM, budget // 2)
    picked = np.unique(np.linspace(0, len(normal) - 1, budget - randoms).round().astype(int))
    rng = np.random.default_rng(seed)
    noise = rng.random((randoms, size), dtype=np.float32)
    if mode == "binary":
        noise = (noise >= 0.5).astype(np.float32)
    return np.concatenate([normal[picked], noise]).astype(np.float32)


def with_reference(
    model_path: Path,
    metadata: ModelMetadata,
    normal: Pixels,
    held_out: Pixels,
    seed: int,
) -> ModelMetadata:
    """`metadata` plus golden images (from the held-out images if any, else the training
    images) and the similarity histogram of the held-out normal images (else the training
    ones, which the model fits better: the reference is then optimistic)."""
    model = load_model(model_path)
    reference_images = held_out if len(held_out) else normal
    golden = golden_pixels(reference_images, metadata.mode, seed)
    # float32 -> Python float is exact, so the stored pixels are the ones that were scored.
    golden_scored = model.score(golden, metric=metadata.metric, threshold=metadata.threshold)
    scored = model.score(reference_images, metric=metadata.metric, threshold=metadata.threshold)
    reference = ReferenceHistogram(
        source="held-out" if reference_images is held_out else "training",
        images=len(reference_images),
        counts={m: histogram(values).tolist() for m, values in scored.scores.items()},
        fpr=float(scored.anomaly.mean()),
    )
    return metadata.model_copy(
        update={
            "golden": GoldenImages(
                pixels=golden.tolist(),
                scores={m: values.tolist() for m, values in golden_scored.scores.items()},
            ),
            "reference": reference,
        }
    )
