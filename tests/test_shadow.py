"""Shadow scoring on real models, without a broker: the candidate scores the live batch's own
pixels, and the data plane swaps live model and shadow together at a batch boundary."""

from pathlib import Path

import numpy as np
import orjson
import pytest

from kafka_messages import image_json, kafka_message
from service.config import Settings
from service.dataplane.loop import DataPlane
from service.dataplane.pipeline import BatchScorer
from service.dataplane.shadow import ShadowScorer
from service.samples import SEED_TEST, SEED_TRAIN
from service.scoring.images import read_images
from service.scoring.model import Model, load_model


@pytest.fixture(scope="module")
def live(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


@pytest.fixture(scope="module")
def candidate(candidate_model_path: Path) -> Model:
    return load_model(candidate_model_path)


def batch() -> list:  # type: ignore[type-arg]
    rng = np.random.default_rng(9)
    images = np.concatenate(
        [
            read_images(SEED_TEST).pixels,
            read_images(SEED_TRAIN).pixels,
            (rng.random((30, 64)) < 0.4).astype(np.float32),
        ]
    )
    messages = [kafka_message(image_json(px, id=f"img-{i}"), i) for i, px in enumerate(images)]
    # A bad message in the middle: the scored rows must still line up.
    messages.insert(3, kafka_message(b"{not json", 99))
    return messages


def test_a_live_result_carries_the_scored_pixels_verdicts_and_keys_row_by_row(
    live: Model,
) -> None:
    messages = batch()
    result = BatchScorer(live).process(messages)
    assert len(result.dead) == 1
    images = np.stack([orjson.loads(m.value())["pixels"] for i, m in enumerate(messages) if i != 3])
    assert result.pixels.shape == (result.scored, 64)
    assert np.array_equal(result.pixels, images.astype(np.float32))
    assert result.keys == [k for k, _ in result.scores]
    assert result.anomaly.tolist() == [orjson.loads(v)["anomaly"] for _, v in result.scores]


def test_the_shadow_scores_the_same_images_with_its_own_model(
    live: Model, candidate: Model
) -> None:
    live_scorer = BatchScorer(live)
    result = live_scorer.process(batch())
    verdicts = ShadowScorer(BatchScorer(candidate)).score(live_scorer, result)

    expected = candidate.score(result.pixels)
    assert verdicts.similarity.tolist() == expected.similarity.tolist()
    assert verdicts.anomaly.tolist() == expected.anomaly.tolist()
    assert np.allclose(verdicts.difference, expected.similarity - result.similarity)
    assert verdicts.difference.any(), "two seeds should not give identical similarities"
    records = [orjson.loads(value) for _, value in verdicts.records]
    assert [key for key, _ in verdicts.records] == result.keys
    for row, record in enumerate(records):
        assert record["id"] == result.keys[row].decode()
        assert record["live"] == {
            "version": live.version,
            "sha256": live.sha256,
            "similarity": float(result.similarity[row]),
            "anomaly": bool(result.anomaly[row]),
        }
        assert record["shadow"]["sha256"] == candidate.sha256
        assert record["shadow"]["anomaly"] == bool(expected.anomaly[row])
        assert record["agree"] == (record["live"]["anomaly"] == record["shadow"]["anomaly"])
    headers = dict(verdicts.headers)
    assert headers["pixelwatch.model.sha256"] == live.sha256.encode()
    assert headers["pixelwatch.shadow.sha256"] == candidate.sha256.encode()
    assert headers["pixelwatch.shadow.version"] == candidate.version.encode()


def test_the_shadow_uses_the_threshold_it_would_have_live(live: Model, candidate: Model) -> None:
    live_scorer = BatchScorer(live)
    result = live_scorer.process(batch())
    strict = ShadowScorer(BatchScorer(candidate, threshold=1.0)).score(live_scorer, result)
    assert strict.anomaly.tolist() == (strict.similarity < 1.0).tolist()


def test_swaps_take_effect_together_at_the_next_batch_boundary_and_the_last_one_wins(
    live: Model, candidate: Model
) -> None:
    seen: list[tuple[BatchScorer, ShadowScorer | None]] = []
    first = BatchScorer(live)
    plane = DataPlane(Settings(), first, on_swap=lambda s, h: seen.append((s, h)))
    second, third = BatchScorer(candidate), BatchScorer(live)
    shadow = ShadowScorer(BatchScorer(candidate))
    plane.swap(second, shadow)
    plane.swap(third)  # before any boundary: replaces the request above
    assert plane.scorer is first and plane.shadow is None
    plane._take_swap()
    assert plane.scorer is third and plane.shadow is None
    assert seen == [(third, None)]
    plane.swap(second, shadow)
    plane._take_swap()
    plane._take_swap()  # nothing pending: no second notification
    assert plane.scorer is second
    assert plane.shadow is shadow
    assert seen == [(third, None), (second, shadow)]
