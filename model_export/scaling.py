"""How training scales with the data: the automatic batch size and the early-stopping split.

The rule (`pixelwatch train --help` and docs/training.md say the same):

- Fewer than `EARLY_STOPPING_MIN` images (the course trains on two): no held-out set, no early
  stopping, one image per optimiser step, every one of `--epochs` runs. Exactly the course.
- From `EARLY_STOPPING_MIN` images on, images are held out for early stopping: with `--fpr`
  the calibration split, without it `VALIDATION_FRACTION` of the images. When their
  reconstruction loss has not improved for `--patience` epochs, the learning rate is divided
  by `train.LR_DROP`; after `LR_DROPS` such plateaus the next one stops training, and the
  weights of the best epoch are kept. `--epochs` is then a maximum.
- `--epochs auto` is `COURSE_EPOCHS` without early stopping and `MAX_AUTO_EPOCHS` with it.
- With `--fpr`, the same held-out images choose the epoch (by their mean loss) and then the
  threshold (a low quantile of their similarities). Holding out a separate tenth for
  stopping took those images from training, and cost detection on the digits: over the ten
  left-out classes of tests/benchmarks/training.py the mean AUROC fell from 0.943 to 0.934.
  Choosing one epoch by a mean barely moves a 5% quantile; the benchmark measures the share
  of fresh normal images the threshold flags, to show it.
- `--batch-size auto` is 1 below `EARLY_STOPPING_MIN` training images, and otherwise the
  power of two nearest to a `STEPS_PER_EPOCH`-th of the training images, capped at
  `MAX_AUTO_BATCH`.
- `--lr auto` is the course's 0.001 for one image per step, and grows with the square root
  of the batch size (larger batches average out gradient noise, so they take larger steps),
  capped at `MAX_AUTO_LR`.

>>> auto_batch_size(2), auto_batch_size(723), auto_batch_size(100_000)
(1, 64, 256)
>>> auto_lr(1), auto_lr(16), auto_lr(256)
(0.001, 0.004, 0.01)
>>> [len(rows) for rows in validation_split(np.arange(10), 0)]
[10, 0]
>>> [len(rows) for rows in validation_split(np.arange(1000), 0)]
[900, 100]
"""

import math
from typing import Final

import numpy as np
from numpy.typing import NDArray

EARLY_STOPPING_MIN: Final = 100  # images; below this there is no held-out set to stop on
VALIDATION_FRACTION: Final = 0.1
STEPS_PER_EPOCH: Final = 12
MAX_AUTO_BATCH: Final = 256
COURSE_LR: Final = 1e-3  # Adam's default, the course's, for one image per step
MAX_AUTO_LR: Final = 1e-2
DEFAULT_PATIENCE: Final = 50
LR_DROPS: Final = 2
COURSE_EPOCHS: Final = 500
MAX_AUTO_EPOCHS: Final = 2000


def auto_batch_size(training_images: int) -> int:
    """1 for a handful of images, as in the course; else about STEPS_PER_EPOCH steps per epoch."""
    if training_images < EARLY_STOPPING_MIN:
        return 1
    ideal = training_images / STEPS_PER_EPOCH
    power = 2 ** round(math.log2(max(ideal, 1.0)))
    return int(min(power, MAX_AUTO_BATCH))


def auto_epochs(early_stopping: bool) -> int:
    """The course's 500 epochs when every epoch runs; a generous maximum when training stops
    by itself."""
    return MAX_AUTO_EPOCHS if early_stopping else COURSE_EPOCHS


def auto_lr(batch_size: int) -> float:
    """COURSE_LR times the square root of the batch size, at most MAX_AUTO_LR."""
    return round(min(COURSE_LR * math.sqrt(batch_size), MAX_AUTO_LR), 6)


def validation_split(
    rows: NDArray[np.intp], seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Seeded (train, early-stopping) subsets of `rows`, each sorted."""
    if len(rows) < EARLY_STOPPING_MIN:
        return np.sort(rows), rows[:0]
    held = min(max(1, round(len(rows) * VALIDATION_FRACTION)), len(rows) - 1)
    # Its own stream ([seed, 1]), independent of the calibration split's (seed).
    order = np.random.default_rng([seed, 1]).permutation(rows)
    return np.sort(order[held:]), np.sort(order[:held])
