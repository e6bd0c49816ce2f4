"""The course's demo, reproduced: train on two images, score four, Hamming at 0.60.

What the course concludes, and what our dense network reproduces:
- the noisy triangle is reconstructed as the clean triangle (similarity 63/64);
- the corners image is the only anomaly; the X (76.6%, as in the course) is not;
- the shifted square stays normal and is moved back to the centre. The course reports 68%
  (44/64, the shifted square against the centred square); our network reconstructs the
  centred square *plus* a few pixels of the triangle, which gives 41/64 to 44/64 depending
  on the seed. The tests assert what is robust, not the exact 44/64.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from model_export.export import ScoringGraph
from model_export.train import FitSettings, train
from model_fixtures import SEED_EPOCHS, SEED_TEST, SEED_TRAIN, seed_model_path  # noqa: F401
from service.scoring.images import ImageShape, read_images
from service.scoring.model import ScoredBatch, load_model
from service.scoring.similarity import METRICS, hamming

SQUARE, TRIANGLE = 0, 1
SHIFTED_SQUARE, NOISY_TRIANGLE, CORNERS, X = 0, 1, 2, 3
THRESHOLD = 0.60
SHAPE = ImageShape(8, 8)

TRAIN = read_images(SEED_TRAIN, SHAPE).pixels
TEST = read_images(SEED_TEST, SHAPE).pixels


@pytest.fixture(scope="module")
def scored(seed_model_path: Path) -> ScoredBatch:  # noqa: F811 - pytest injects the fixture
    return load_model(seed_model_path).score(TEST)


def assert_course_conclusions(
    reconstruction: NDArray[np.float32], similarity: NDArray[np.float32]
) -> None:
    square = TRAIN[SQUARE].reshape(8, 8)
    shifted = reconstruction[SHIFTED_SQUARE].reshape(8, 8)
    assert np.array_equal(reconstruction[NOISY_TRIANGLE], TRAIN[TRIANGLE])
    assert similarity[NOISY_TRIANGLE] == pytest.approx(63 / 64, abs=1e-6)
    assert not shifted[:, 0].any(), "the square was not moved back from the left edge"
    assert (shifted >= square).all(), "some pixel of the centred square is missing"
    assert similarity[SHIFTED_SQUARE] >= THRESHOLD
    assert (similarity < THRESHOLD).tolist() == [False, False, True, False]


def test_course_figures_are_what_these_images_give() -> None:
    # 68% in the course: the shifted square against the centred one; 98%: one pixel of 64.
    assert hamming(TEST[SHIFTED_SQUARE], TRAIN[SQUARE])[0] == 44 / 64
    assert hamming(TEST[NOISY_TRIANGLE], TRAIN[TRIANGLE])[0] == 63 / 64


def test_seed_model_ships_the_course_metric_and_threshold(seed_model_path: Path) -> None:  # noqa: F811
    metadata = load_model(seed_model_path).metadata
    assert (metadata.mode, metadata.metric, metadata.threshold) == ("binary", "hamming", 0.60)
    assert (metadata.arch, metadata.arch_params["epochs"]) == ("dense", 500)


def test_training_images_are_reconstructed_exactly(seed_model_path: Path) -> None:  # noqa: F811
    scored = load_model(seed_model_path).score(TRAIN)
    assert np.array_equal(scored.reconstruction, TRAIN)
    assert not scored.anomaly.any()


def test_noisy_triangle_is_reconstructed_as_the_clean_triangle(scored: ScoredBatch) -> None:
    assert np.array_equal(scored.reconstruction[NOISY_TRIANGLE], TRAIN[TRIANGLE])
    assert scored.similarity[NOISY_TRIANGLE] == pytest.approx(63 / 64, abs=1e-6)


def test_shifted_square_is_moved_back_to_the_centre_and_stays_normal(scored: ScoredBatch) -> None:
    reconstruction = scored.reconstruction[SHIFTED_SQUARE].reshape(8, 8)
    assert not reconstruction[:, 0].any()
    assert (reconstruction >= TRAIN[SQUARE].reshape(8, 8)).all()
    assert scored.similarity[SHIFTED_SQUARE] > THRESHOLD
    assert not scored.anomaly[SHIFTED_SQUARE]


def test_only_the_corners_image_is_flagged(scored: ScoredBatch) -> None:
    assert scored.threshold == THRESHOLD
    assert scored.anomaly.tolist() == [False, False, True, False]
    assert scored.similarity[X] == pytest.approx(49 / 64, abs=1e-6)  # the course's 76%


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_course_conclusions_hold_for_other_seeds(seed: int) -> None:
    # Seed 0 is the exported model above; the other seeds are scored by the same wrapper
    # module in torch (test_export checks it against the ONNX graph) to keep this quick.
    settings = FitSettings(epochs=SEED_EPOCHS, seed=seed)
    trained = train("dense", SHAPE, {}, TRAIN, settings)
    with torch.no_grad():
        outputs = ScoringGraph(trained.autoencoder, "binary")(torch.from_numpy(TEST))
    similarity = outputs[1 + METRICS.index("hamming")]
    assert_course_conclusions(outputs[0].numpy(), similarity.numpy())
