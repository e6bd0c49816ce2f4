"""Prometheus metrics for the worker: what it scored, how fast, and how far behind it is.

`WorkerMetrics` receives its `CollectorRegistry`, so tests give it a fresh one; the worker
uses the default registry (which adds process and Python metrics). The data path feeds it
once per batch (`observe_batch`), never once per image. `instrument` puts it on the faust
app: faust's own Prometheus sensor on the same registry, one `/metrics` page on the app's
web port.
"""

import logging
import time
from collections import Counter as Tally
from collections.abc import Mapping, Set
from typing import Final

import faust
import numpy as np
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.dataplane.pipeline import BatchResult, BatchScorer
from service.dataplane.shadow import ShadowScorer
from service.lifecycle.validate import REASONS
from service.observability.histogram import BulkHistogram
from service.schemas import DeadLetterReason

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]

OUTCOMES: Final = ("normal", "anomaly", "invalid")

# Similarities live in [0, 1]; even 0.05 steps keep the heatmap rows equal in height.
SIMILARITY_BUCKETS: Final = tuple(round(0.05 * i, 2) for i in range(1, 21))
# One ONNX call for a batch of 8x8 images takes well under a millisecond to tens of ms.
INFERENCE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# From the producer's timestamp to our output: batching adds up to `batch_window`, a backlog
# adds minutes, so the buckets reach well past a minute.
LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
# Shadow similarity minus live similarity: symmetric, finest around 0, where models agree.
DIFFERENCE_BUCKETS: Final = (
    -0.5, -0.2, -0.1, -0.05, -0.02, -0.01, -0.005, 0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
)  # fmt: skip
RELOAD_RESULTS: Final = ("ok", *REASONS)
SHADOW_VERDICTS: Final = ("both_normal", "both_anomaly", "live_only", "shadow_only")

FAUST_PREFIX: Final = "faust"
"""Prefix of faust's sensor metrics; fixed so that names do not depend on the consumer group."""


class WorkerMetrics:
    """The worker's own metrics, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.images = Counter(
            "pixelwatch_images",
            "Images consumed, by outcome (invalid ones went to the dead-letter topic)",
            ["outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "pixelwatch_dlq",
            "Messages sent to the dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )
        self.similarity = BulkHistogram(
            "pixelwatch_similarity",
            "Similarity of each scored image to its reconstruction, for the active metric",
            SIMILARITY_BUCKETS,
            registry,
        )
        self.inference = Histogram(
            "pixelwatch_inference_seconds",
            "Seconds to decode, score, encode and hand to the producer one batch",
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "pixelwatch_batch_size",
            "Messages per scored batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.latency = BulkHistogram(
            "pixelwatch_end_to_end_latency_seconds",
            "Seconds from an image's event time (its ts, else the Kafka timestamp) to its "
            "output being handed to the producer",
            LATENCY_BUCKETS,
            registry,
        )
        self.model_info = Gauge(
            "pixelwatch_model_info",
            "The scoring model in use (always 1; the labels carry the facts)",
            ["version", "sha256", "metric", "mode"],
            registry=registry,
        )
        self.threshold = Gauge(
            "pixelwatch_threshold",
            "Anomaly threshold: a similarity strictly below it is an anomaly",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "pixelwatch_consumer_lag",
            "Messages in an assigned input partition not yet committed by this worker",
            ["topic", "partition"],
            registry=registry,
        )
        self.committed_offset = Gauge(
            "pixelwatch_committed_offset",
            "The group's committed offset (next to read) of each input partition this worker "
            "owns; it only moves once the outputs before it are confirmed by the broker",
            ["topic", "partition"],
            registry=registry,
        )
        self.unconfirmed = Gauge(
            "pixelwatch_unconfirmed_messages",
            "Consumed messages whose outputs the broker has not confirmed yet (at most "
            "PIXELWATCH_MAX_IN_FLIGHT; at the limit, consuming pauses)",
            registry=registry,
        )
        self.delivery_failures = Counter(
            "pixelwatch_delivery_failures",
            "Records the broker did not take after the producer's retries, by topic and error; "
            "an output is then replaced by a dead letter, a dead letter stops the worker",
            ["topic", "reason"],
            registry=registry,
        )
        self.reloads = Counter(
            "pixelwatch_model_reloads",
            "Models offered to this worker (published, promoted, rolled back, or a changed model "
            "file), by result: ok, or the check that refused it",
            ["result"],
            registry=registry,
        )
        self.shadow_info = Gauge(
            "pixelwatch_shadow_model_info",
            "The shadow model scoring beside the live one (absent without a shadow)",
            ["version", "sha256"],
            registry=registry,
        )
        self.shadow_verdicts = Counter(
            "pixelwatch_shadow_verdicts",
            "Images scored by both the live and the shadow model, by how their verdicts compare",
            ["verdict"],
            registry=registry,
        )
        self.shadow_difference = BulkHistogram(
            "pixelwatch_shadow_similarity_difference",
            "Shadow model's similarity minus the live model's, per image scored by both",
            DIFFERENCE_BUCKETS,
            registry,
        )
        self.topic_partitions = Gauge(
            "pixelwatch_topic_partitions",
            "Partitions of each of the worker's topics, as found at start-up",
            ["topic"],
            registry=registry,
        )
        self.topic_partitions_mismatch = Gauge(
            "pixelwatch_topic_partitions_mismatch",
            "1 when a topic's partition count differs from PIXELWATCH_PARTITIONS (it is used "
            "as it is; the input topic's count bounds how many workers share the work)",
            ["topic"],
            registry=registry,
        )
        # Every label value exists from the start, at 0, so rate() and the alerts see a
        # series before the first image (or the first dead letter of a kind) arrives.
        for outcome in OUTCOMES:
            self.images.labels(outcome)
        for reason in DeadLetterReason:
            self.dead_letters.labels(reason.value)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        for verdict in SHADOW_VERDICTS:
            self.shadow_verdicts.labels(verdict)
        self._lags: dict[TopicPartition, int] = {}
        self._committed_labels: set[tuple[str, str]] = set()

    def describe_model(self, scorer: BatchScorer) -> None:
        """Publish the model and threshold the scorer uses (reads the model file for its hash)."""
        model = scorer.model
        self.model_info.clear()
        self.model_info.labels(
            version=model.version,
            sha256=model.sha256,
            metric=scorer.metric,
            mode=model.metadata.mode,
        ).set(1)
        self.threshold.set(scorer.threshold)

    def describe_shadow(self, shadow: ShadowScorer | None) -> None:
        self.shadow_info.clear()
        if shadow is not None:
            self.shadow_info.labels(version=shadow.version, sha256=shadow.sha256).set(1)

    def on_swap(self, scorer: BatchScorer, shadow: ShadowScorer | None) -> None:
        """A `SwapObserver`: the model metrics follow the swap when it takes effect."""
        self.describe_model(scorer)
        self.describe_shadow(shadow)

    def reloaded(self, refused: str | None) -> None:
        """One model offered to the worker: `refused` is the check that failed, or None."""
        self.reloads.labels(refused or "ok").inc()

    def describe_topics(self, partitions: Mapping[str, int], expected: int) -> None:
        """Publish each topic's partition count and whether it is the configured one."""
        for topic, count in partitions.items():
            self.topic_partitions.labels(topic).set(count)
            self.topic_partitions_mismatch.labels(topic).set(int(count != expected))

    def observe_batch(self, result: BatchResult, seconds: float) -> None:
        """A `BatchObserver`: count one batch's outcomes once its outputs are handed over."""
        flagged = result.flagged
        self.images.labels("anomaly").inc(flagged)
        self.images.labels("normal").inc(result.scored - flagged)
        if result.dead:
            self.images.labels("invalid").inc(len(result.dead))
            for reason, count in Tally(d.reason for d in result.dead).items():
                self.dead_letters.labels(reason.value).inc(count)
        if result.scored:
            self.similarity.observe_many(result.similarity)
            # A producer's clock ahead of ours would give a negative age: count it as 0.
            now_ms = time.time() * 1000.0
            self.latency.observe_many(np.maximum(0.0, now_ms - result.ts_ms) / 1000.0)
        self.inference.observe(seconds)
        self.batch_size.observe(len(result.messages))
        shadow = result.shadow
        if shadow is not None and shadow.images:
            live, other = result.anomaly, shadow.anomaly
            both = int((live & other).sum())
            live_only = int((live & ~other).sum())
            shadow_only = int((other & ~live).sum())
            self.shadow_verdicts.labels("both_anomaly").inc(both)
            self.shadow_verdicts.labels("live_only").inc(live_only)
            self.shadow_verdicts.labels("shadow_only").inc(shadow_only)
            normal = shadow.images - both - live_only - shadow_only
            self.shadow_verdicts.labels("both_normal").inc(normal)
            self.shadow_difference.observe_many(shadow.difference)

    def delivery_failed(self, topic: str, reason: str, dead_lettered: bool) -> None:
        """A `DeliveryObserver`: the failure, and the dead letter sent in its place."""
        self.delivery_failures.labels(topic, reason).inc()
        if dead_lettered:  # its image was counted as scored already: not an invalid one
            self.dead_letters.labels(DeadLetterReason.DELIVERY.value).inc()

    def set_consumer_lag(self, lags: Mapping[TopicPartition, int]) -> None:
        """Replace the lag series: one per partition in `lags`, none for any other (the
        committed-offset series follow the same partitions)."""
        for topic, partition in self._lags.keys() - lags.keys():
            self.consumer_lag.remove(topic, str(partition))
            if (topic, str(partition)) in self._committed_labels:
                self.committed_offset.remove(topic, str(partition))
                self._committed_labels.discard((topic, str(partition)))
        for (topic, partition), lag in lags.items():
            self.consumer_lag.labels(topic, str(partition)).set(lag)
        self._lags = dict(lags)

    def set_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """An `on_commit` observer: the offsets the broker confirmed for the group."""
        for (topic, partition), offset in offsets.items():
            self.committed_offset.labels(topic, str(partition)).set(offset)
            self._committed_labels.add((topic, str(partition)))

    def forget_partitions(self, partitions: Set[TopicPartition]) -> None:
        """Drop the lag series of partitions this worker no longer owns."""
        self.set_consumer_lag({tp: lag for tp, lag in self._lags.items() if tp not in partitions})


def instrument(app: faust.App, metrics: WorkerMetrics) -> None:
    """Serve `metrics` and faust's own sensor metrics on the app's `/metrics` page."""
    setup_prometheus_sensors(
        app, pattern="/metrics", registry=metrics.registry, name_prefix=FAUST_PREFIX
    )
