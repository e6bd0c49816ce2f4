"""The worker's metrics, fed real batches from the real model, each test on a fresh registry."""

import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Message, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from kafka_messages import kafka_message
from service.config import Settings
from service.controlplane.app import create_app
from service.dataplane.loop import partition_lag, watermarks
from service.dataplane.pipeline import BatchScorer
from service.observability.metrics import (
    SIMILARITY_BUCKETS,
    WorkerMetrics,
    instrument,
)
from service.samples import SEED_TEST, SEED_TRAIN
from service.schemas import DeadLetterReason
from service.scoring.images import read_images
from service.scoring.model import Model, load_model


@pytest.fixture(scope="module")
def model(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> WorkerMetrics:
    return WorkerMetrics(registry)


def record(value: bytes, offset: int, timestamp_ms: int = 1_700_000_000_000) -> Message:
    return kafka_message(value, offset, partition=0, timestamp_ms=timestamp_ms)


def image(pixels: np.ndarray, **extra: object) -> bytes:
    return orjson.dumps({"pixels": pixels, **extra}, option=orjson.OPT_SERIALIZE_NUMPY)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    assert sample is not None, f"{name}{labels} is not exported"
    return sample


BAD_INPUTS = {
    b"{not json": DeadLetterReason.INVALID_JSON,
    b'{"pixels": {"a": 1}}': DeadLetterReason.SCHEMA,
    b'{"pixels": [0, 1, 0]}': DeadLetterReason.PIXEL_COUNT,
    b'{"pixels": [' + b"0, " * 63 + b"7]}": DeadLetterReason.PIXEL_VALUE,
    b'{"pixels": "' + b"." * 70_000 + b'"}': DeadLetterReason.OVERSIZED,
}


def test_every_outcome_and_reason_is_exported_at_zero_before_the_first_image(
    registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    for outcome in ("normal", "anomaly", "invalid"):
        assert value(registry, "pixelwatch_images_total", outcome=outcome) == 0
    for reason in DeadLetterReason:
        assert value(registry, "pixelwatch_dlq_total", reason=reason.value) == 0


def test_a_batch_is_counted_by_outcome_and_its_dead_letters_by_reason(
    model: Model, registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    images = np.concatenate([read_images(SEED_TEST).pixels, read_images(SEED_TRAIN).pixels])
    anomalous = int(model.score(images).anomaly.sum())
    assert 0 < anomalous < len(images)
    values = [image(px) for px in images] + list(BAD_INPUTS) + [b"{not json either"]
    result = BatchScorer(model).process([record(v, i) for i, v in enumerate(values)])

    metrics.observe_batch(result, 0.003)

    assert value(registry, "pixelwatch_images_total", outcome="anomaly") == anomalous
    assert value(registry, "pixelwatch_images_total", outcome="normal") == len(images) - anomalous
    assert value(registry, "pixelwatch_images_total", outcome="invalid") == len(BAD_INPUTS) + 1
    for reason in DeadLetterReason:
        expected = {**dict.fromkeys(BAD_INPUTS.values(), 1), DeadLetterReason.INVALID_JSON: 2}
        got = value(registry, "pixelwatch_dlq_total", reason=reason.value)
        assert got == expected.get(reason, 0), reason
    assert value(registry, "pixelwatch_batch_size_count") == 1
    assert value(registry, "pixelwatch_batch_size_sum") == len(values)
    assert value(registry, "pixelwatch_inference_seconds_sum") == pytest.approx(0.003)


def test_similarities_fill_buckets_across_zero_to_one(
    model: Model, registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    rng = np.random.default_rng(7)
    images = np.concatenate(
        [read_images(SEED_TRAIN).pixels, (rng.random((30, 64)) < 0.5).astype(np.float32)]
    )
    result = BatchScorer(model).process([record(image(px), i) for i, px in enumerate(images)])
    similarity = result.similarity.astype(np.float64)

    metrics.observe_batch(result, 0.001)

    assert SIMILARITY_BUCKETS[-1] == 1.0 and len(SIMILARITY_BUCKETS) == 20
    for bound in SIMILARITY_BUCKETS:
        count = value(registry, "pixelwatch_similarity_bucket", le=str(bound))
        assert count == int((similarity <= bound).sum()), bound
    assert value(registry, "pixelwatch_similarity_sum") == pytest.approx(similarity.sum())
    # Random noise lands around one half, the training images reconstruct perfectly (1.0).
    assert value(registry, "pixelwatch_similarity_bucket", le="0.8") == 30
    assert value(registry, "pixelwatch_similarity_bucket", le="1.0") == len(images)


def test_end_to_end_latency_runs_from_the_message_ts_to_the_output(
    model: Model, registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    now_ms = int(time.time() * 1000)
    pixels = read_images(SEED_TRAIN).pixels[0]
    values = [
        image(pixels, ts=now_ms - 3_000),  # produced three seconds ago
        image(pixels),  # no ts: the Kafka timestamp, one and a half seconds ago, counts
        image(pixels, ts=now_ms + 60_000),  # a producer clock a minute ahead counts as 0
    ]
    records = [record(v, i, timestamp_ms=now_ms - 1_500) for i, v in enumerate(values)]
    result = BatchScorer(model).process(records)

    metrics.observe_batch(result, 0.001)

    assert value(registry, "pixelwatch_end_to_end_latency_seconds_count") == 3
    assert value(registry, "pixelwatch_end_to_end_latency_seconds_sum") == pytest.approx(4.5, abs=1)
    assert value(registry, "pixelwatch_end_to_end_latency_seconds_bucket", le="0.005") == 1
    assert value(registry, "pixelwatch_end_to_end_latency_seconds_bucket", le="2.5") == 2
    assert value(registry, "pixelwatch_end_to_end_latency_seconds_bucket", le="5.0") == 3


def test_model_info_and_threshold_describe_the_scorer_in_use(
    model: Model, registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    metrics.describe_model(BatchScorer(model))
    metrics.describe_model(BatchScorer(model, metric="dice", threshold=0.42))

    labels = {
        "version": model.version,
        "sha256": model.sha256,
        "metric": "dice",
        "mode": model.metadata.mode,
    }
    assert value(registry, "pixelwatch_model_info", **labels) == 1
    assert value(registry, "pixelwatch_threshold") == 0.42
    # The first description was replaced, not kept beside the second.
    first = {**labels, "metric": "hamming"}
    assert registry.get_sample_value("pixelwatch_model_info", first) is None


def test_lag_series_follow_the_assignment_and_vanish_for_revoked_partitions(
    registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    def lag(partition: int) -> float | None:
        labels = {"topic": "images", "partition": str(partition)}
        return registry.get_sample_value("pixelwatch_consumer_lag", labels)

    metrics.set_consumer_lag({("images", 0): 5, ("images", 1): 0, ("images", 2): 7})
    assert [lag(p) for p in range(4)] == [5, 0, 7, None]

    metrics.set_consumer_lag({("images", 1): 3, ("images", 3): 1})  # after a rebalance
    assert [lag(p) for p in range(4)] == [None, 3, None, 1]

    metrics.forget_partitions({("images", 3), ("images", 9)})
    assert [lag(p) for p in range(4)] == [None, 3, None, None]


@pytest.mark.parametrize(
    ("highwater", "committed", "low", "lag"),
    [
        (100, 60, 0, 40),
        (100, 100, 0, 0),  # caught up: Kafka's committed offset is the next one to read
        (100, None, 30, 70),  # nothing committed yet: everything retained is still to do
        (10, 12, 0, 0),  # a stale high watermark never makes the lag negative
    ],
)
def test_partition_lag_is_the_high_watermark_minus_the_committed_offset(
    highwater: int, committed: int | None, low: int, lag: int
) -> None:
    assert partition_lag(highwater, committed, low) == lag


class WatermarkConsumer:
    """Stands in for the consumer's two watermark sources: its cache of the last fetch, and a
    query to the broker (which the tests count)."""

    def __init__(self, cached: tuple[int, int], broker: tuple[int, int]) -> None:
        self.cached, self.broker = cached, broker
        self.queries = 0

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        if cached:
            return self.cached
        self.queries += 1
        return self.broker


def test_the_lag_refresh_reads_the_last_fetchs_high_watermark_without_asking_the_broker() -> None:
    consumer = WatermarkConsumer(cached=(-1001, 120), broker=(0, 125))
    tp = TopicPartition("images", 0)
    assert watermarks(consumer, tp, committed=100) == (-1001, 120)  # type: ignore[arg-type]
    assert consumer.queries == 0  # a broker query would wait behind the consumer's own fetch


@pytest.mark.parametrize(
    ("cached", "committed"),
    [
        ((-1001, -1001), 100),  # the partition was not fetched yet
        ((-1001, 120), None),  # nothing committed: the lag counts from the low watermark
    ],
)
def test_the_lag_refresh_asks_the_broker_when_the_cache_cannot_answer(
    cached: tuple[int, int], committed: int | None
) -> None:
    consumer = WatermarkConsumer(cached=cached, broker=(30, 125))
    tp = TopicPartition("images", 0)
    assert watermarks(consumer, tp, committed) == (30, 125)  # type: ignore[arg-type]
    assert consumer.queries == 1


def test_metrics_page_exposes_ours_and_fausts_from_one_registry(
    model: Model, tmp_path: Path, registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    settings = Settings(data_dir=tmp_path, group_id="group-with.dots-and-dashes")
    app = create_app(settings)

    instrument(app, metrics)

    text = generate_latest(registry).decode()
    assert "pixelwatch_images_total{" in text
    # faust's names are fixed, whatever the consumer group (its default prefix is the app id).
    assert "faust_consumer_commit_latency_bucket{" in text
    assert "group_with" not in text
    assert "/metrics" in app.web.views
