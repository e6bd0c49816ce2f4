"""Fixtures that train real models; conftest imports them for the whole session."""

import functools
from pathlib import Path
from typing import Final

import pytest

from model_export import TrainOptions, train_and_export

SAMPLES: Final = Path(__file__).resolve().parent.parent / "service" / "samples"
SEED_TRAIN: Final = SAMPLES / "seed_train.txt"
SEED_TEST: Final = SAMPLES / "seed_test.txt"
# The course's set-up: 500 epochs, one Adam step per image, binary mode, Hamming at 0.60.
SEED_EPOCHS: Final = 500
SEED_OPTIONS: Final = TrainOptions(epochs=SEED_EPOCHS, seed=0)
# The same set-up with another seed: a candidate that mostly agrees, with other similarities.
CANDIDATE_OPTIONS: Final = TrainOptions(epochs=SEED_EPOCHS, seed=1)


OPTIONS: Final = {"seed": SEED_OPTIONS, "candidate": CANDIDATE_OPTIONS}


@functools.cache
def _seed_model(base: Path, name: str = "seed") -> Path:
    # Cached per session directory: a module that also imports the fixture gets the same file.
    directory = base / f"{name}-model"
    directory.mkdir(exist_ok=True)
    return train_and_export(SEED_TRAIN, directory / f"{name}.onnx", OPTIONS[name]).model_path


@pytest.fixture(scope="session")
def seed_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The course's demo model (and its report), trained once per session."""
    return _seed_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def candidate_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The course's model trained with another seed: a second version to swap in or shadow."""
    return _seed_model(tmp_path_factory.getbasetemp(), "candidate")
