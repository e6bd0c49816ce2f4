"""The course's demo images, shipped with the runtime so demos and tests need no download."""

from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).parent
SEED_TRAIN: Final = HERE / "seed_train.txt"
SEED_TEST: Final = HERE / "seed_test.txt"
