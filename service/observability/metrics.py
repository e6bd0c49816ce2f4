"""Prometheus metrics for the worker: what it scored, how fast, and how far behind it is.

`WorkerMetrics` receives its `CollectorRegistry`, so tests give it a fresh one; the worker
uses the default registry (which adds process and Python metrics). `instrument` puts it on a
faust app: faust's own Prometheus sensor on the same registry, one `/metrics` page on the
app's web port, and a timer that refreshes the consumer lag.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Set
from typing import Any, Final

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.transport.consumer import Consumer
from faust.types import TP
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.dataplane.pipeline import BatchResult, BatchScorer
from service.schemas import DeadLetterReason

log = logging.getLogger(__name__)

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
        self.similarity = Histogram(
            "pixelwatch_similarity",
            "Similarity of each scored image to its reconstruction, for the active metric",
            buckets=SIMILARITY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "pixelwatch_inference_seconds",
            "Seconds to decode, score and queue the outputs of one batch",
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "pixelwatch_batch_size",
            "Messages per scored batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "pixelwatch_end_to_end_latency_seconds",
            "Seconds from an image's event time (its ts, else the Kafka timestamp) to its "
            "output being handed to the producer",
            buckets=LATENCY_BUCKETS,
            registry=registry,
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
        # Every label value exists from the start, at 0, so rate() and the alerts see a
        # series before the first image (or the first dead letter of a kind) arrives.
        for outcome in OUTCOMES:
            self.images.labels(outcome)
        for reason in DeadLetterReason:
            self.dead_letters.labels(reason.value)
        self._lags: dict[TP, int] = {}

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

    def observe_batch(self, result: BatchResult, seconds: float) -> None:
        """A `BatchObserver`: count one batch's outcomes once its outputs are queued."""
        now_ms = time.time() * 1000.0
        anomalies = sum(1 for out in result.outputs if out.anomaly)
        self.images.labels("anomaly").inc(anomalies)
        self.images.labels("normal").inc(len(result.outputs) - anomalies)
        self.images.labels("invalid").inc(len(result.dead))
        for dead in result.dead:
            self.dead_letters.labels(dead.reason.value).inc()
        for out in result.outputs:
            self.similarity.observe(out.similarity)
            # A producer's clock ahead of ours would give a negative age: count it as 0.
            self.latency.observe(max(0.0, now_ms - out.ts_ms) / 1000.0)
        self.inference.observe(seconds)
        self.batch_size.observe(len(result.outputs) + len(result.dead))

    def set_consumer_lag(self, lags: Mapping[TP, int]) -> None:
        """Replace the lag series: one per partition in `lags`, none for any other."""
        for tp in self._lags.keys() - lags.keys():
            self.consumer_lag.remove(tp.topic, str(tp.partition))
        for tp, lag in lags.items():
            self.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        self._lags = dict(lags)

    def forget_partitions(self, partitions: Set[TP]) -> None:
        """Drop the lag series of partitions this worker no longer owns."""
        self.set_consumer_lag({tp: lag for tp, lag in self._lags.items() if tp not in partitions})


def partition_lag(highwater: int, committed: int | None, position: int | None) -> int:
    """Messages behind in one partition: the high watermark minus the group's committed offset.

    Kafka's committed offset is the next one to read, so a caught-up partition has lag 0.
    Before the group first commits there, the consumer's position stands in for it.
    """
    done = committed if committed is not None else position
    if done is None:
        return 0
    return max(0, highwater - done)


async def measure_lag(consumer: Consumer, topic: str) -> dict[TP, int]:
    """Lag of every partition of `topic` assigned to this consumer.

    The high watermarks come from the broker, not from the last fetch, so a consumer that
    stopped fetching still sees its lag grow.
    """
    assigned = sorted(tp for tp in consumer.assignment() if tp.topic == topic)
    if not assigned:
        return {}
    # faust keeps the group's committed offsets here (read from Kafka on assignment,
    # updated after each commit) and has no public accessor for them.
    committed = {tp: consumer._committed_offset.get(tp) for tp in assigned}
    uncommitted = [tp for tp, offset in committed.items() if offset is None]
    highwaters, positions = await asyncio.gather(
        consumer.highwaters(*assigned),
        asyncio.gather(*(consumer.position(tp) for tp in uncommitted)),
    )
    position = dict(zip(uncommitted, positions, strict=True))
    return {tp: partition_lag(highwaters[tp], committed[tp], position.get(tp)) for tp in assigned}


def instrument(
    app: faust.App,
    metrics: WorkerMetrics,
    topic: str,
    lag_interval: float,
    on_lag: Callable[[Mapping[TP, int]], None] | None = None,
) -> None:
    """Serve `metrics` and faust's own sensor metrics on the app's `/metrics` page, and keep
    the consumer lag of `topic` fresh (every `lag_interval` seconds and on each rebalance);
    `on_lag` receives each fresh measurement too."""
    setup_prometheus_sensors(
        app, pattern="/metrics", registry=metrics.registry, name_prefix=FAUST_PREFIX
    )

    async def refresh_lag() -> None:
        consumer = app.consumer
        if not isinstance(consumer, Consumer):
            return
        try:
            lags = await measure_lag(consumer, topic)
            owned = consumer.assignment()
        except Exception as exc:  # a missed refresh must not stop the worker; the next retries
            log.warning("consumer lag not refreshed (next try in %ss): %r", lag_interval, exc)
            return
        # A rebalance may have revoked partitions while the offsets were being fetched.
        owned_lags = {tp: lag for tp, lag in lags.items() if tp in owned}
        metrics.set_consumer_lag(owned_lags)
        if on_lag is not None:
            on_lag(owned_lags)

    async def on_revoked(_sender: object, *args: Any, **_: Any) -> None:
        # mode's signals call receivers as (sender, *args, signal=..., **kwargs); faust sends
        # the revoked partitions as the one positional argument.
        metrics.forget_partitions(args[0])

    app.timer(lag_interval, name="pixelwatch.consumer_lag")(refresh_lag)
    # mode types receivers with mypy_extensions' VarArg/NamedArg, which mypy matches with no
    # function at all (not even `def f(*args: Any, **kwargs: Any)`).
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
