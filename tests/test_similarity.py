"""Golden values from the course and the metrics' edge cases."""

import numpy as np
import pytest

from service.samples import SEED_TEST, SEED_TRAIN
from service.scoring.images import ImageShape, read_images
from service.scoring.similarity import (
    RECONSTRUCTION_METRICS,
    REFERENCE,
    all_scores,
    combined_similarity,
    cosine,
    dice,
    hamming,
    memory_similarity,
    ruzicka,
    squash,
)

SHAPE = ImageShape(8, 8)


@pytest.fixture(scope="module")
def centred_square() -> np.ndarray:
    return np.asarray(read_images(SEED_TRAIN, SHAPE).pixels[0])


@pytest.fixture(scope="module")
def shifted_square() -> np.ndarray:
    return np.asarray(read_images(SEED_TEST, SHAPE).pixels[0])


def test_shifted_square_against_centred_square_matches_the_course(
    centred_square: np.ndarray, shifted_square: np.ndarray
) -> None:
    # The course: 20 differing pixels -> Hamming 1 - 20/64 = 68%; min 10 / max 30 -> Ruzicka 33%.
    assert hamming(shifted_square, centred_square)[0] == pytest.approx(44 / 64)
    assert ruzicka(shifted_square, centred_square)[0] == pytest.approx(10 / 30)
    assert dice(shifted_square, centred_square)[0] == pytest.approx(2 * 10 / 40)
    assert cosine(shifted_square, centred_square)[0] == pytest.approx(10 / 20)


def test_identical_images_score_one_on_every_metric(centred_square: np.ndarray) -> None:
    for name, value in all_scores(centred_square, centred_square).items():
        assert value[0] == pytest.approx(1.0), name


def test_two_blank_images_are_identical_and_blank_against_ink_is_not() -> None:
    blank, ink = np.zeros((1, 64)), np.ones((1, 64))
    for name in ("ruzicka", "dice", "cosine", "hamming"):
        assert REFERENCE[name](blank, blank)[0] == 1.0, name
        assert REFERENCE[name](blank, ink)[0] == 0.0, name


def test_gray_values_use_the_generalised_formulas() -> None:
    i = np.array([[0.2, 0.8, 0.0, 1.0]])
    o = np.array([[0.4, 0.8, 0.5, 0.0]])
    assert hamming(i, o)[0] == pytest.approx(1 - (0.2 + 0 + 0.5 + 1.0) / 4)
    assert ruzicka(i, o)[0] == pytest.approx((0.2 + 0.8) / (0.4 + 0.8 + 0.5 + 1.0))
    assert dice(i, o)[0] == pytest.approx(2 * 1.0 / (2.0 + 1.7))
    expected = (0.08 + 0.64) / (np.linalg.norm(i) * np.linalg.norm(o))
    assert cosine(i, o)[0] == pytest.approx(expected)


def test_every_metric_stays_in_unit_interval_on_random_batches() -> None:
    rng = np.random.default_rng(7)
    i, o = rng.random((500, 64)), rng.random((500, 64))
    i[::7] = 0.0  # some blank rows
    for name in RECONSTRUCTION_METRICS:
        values = REFERENCE[name](i, o)
        assert values.shape == (500,)
        assert ((values >= 0) & (values <= 1)).all(), name


def test_dice_is_a_monotone_function_of_ruzicka_so_it_ranks_images_identically() -> None:
    rng = np.random.default_rng(3)
    i, o = rng.random((300, 64)), rng.random((300, 64))
    r, d = ruzicka(i, o), dice(i, o)
    np.testing.assert_allclose(d, 2 * r / (1 + r), rtol=1e-12)
    assert np.array_equal(np.argsort(r, kind="stable"), np.argsort(d, kind="stable"))


def test_memory_similarity_is_one_on_a_stored_code_one_half_at_the_scale_and_decreasing() -> None:
    distances = np.asarray([0.0, 0.5, 2.0, 4.0, 1e6])
    values = memory_similarity(distances, scale=2.0)
    assert values[:4].tolist() == [1.0, 0.8, 0.5, 1 / 3]
    assert (np.diff(values) < 0).all() and np.float32(values[-1]) > 0


def test_squash_maps_the_line_onto_the_unit_interval_without_ties_far_out() -> None:
    z = np.asarray([-1e6, -1.0, 0.0, 1.0, 100.0, 1e6])
    values = squash(z)
    assert values[2] == 0.5 and values[1] == 0.75 and values[3] == 0.25
    assert (np.diff(values) < 0).all()
    assert ((values > 0) & (values < 1)).all()
    assert np.float32(values[-2]) != np.float32(values[-1])


def test_combined_averages_the_two_standardised_scores_before_the_offset() -> None:
    args = {
        "reconstruction_mean": 0.9,
        "reconstruction_spread": 0.05,
        "memory_mean": 0.8,
        "memory_spread": 0.1,
    }
    at_mean = combined_similarity(np.asarray([0.9]), np.asarray([0.8]), offset=0.0, **args)
    assert at_mean[0] == 0.5
    # One spread below on reconstruction, one above on memory: they cancel.
    cancel = combined_similarity(np.asarray([0.85]), np.asarray([0.9]), offset=0.0, **args)
    assert cancel[0] == pytest.approx(0.5)
    # Two spreads below on both: z = 2; the offset shifts it.
    low = combined_similarity(np.asarray([0.8]), np.asarray([0.6]), offset=1.0, **args)
    assert low[0] == pytest.approx(squash(np.asarray([1.0]))[0])
