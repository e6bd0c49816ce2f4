"""The faust application: one agent that scores the input topic in batches.

The agent takes up to `batch_size` events (or what arrived within `batch_window`), scores
them with one onnxruntime call, and hands every output to the producer buffer without
awaiting each send. faust acks the batch's events only after the loop body ran, and flushes
the producer before it commits offsets, so a committed offset always has its outputs
produced: at-least-once delivery.
"""

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import faust

from service.config import Settings
from service.kafka import faust_credentials
from service.pipeline import BatchResult, BatchScorer, Record

log = logging.getLogger(__name__)

BatchObserver = Callable[[BatchResult, float], None]
"""Called after each batch with the result and the seconds spent scoring it."""


def to_record(event: Any) -> Record:
    message = event.message
    return Record(
        key=message.key,
        value=message.value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000),
    )


class Topics:
    """The worker's four topics, raw bytes in and out."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        def raw(name: str) -> faust.TopicT:
            return app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=settings.partitions,
            )

        self.images = raw(settings.input_topic)
        self.anomalies = raw(settings.anomalies_topic)
        self.scores = raw(settings.scores_topic) if settings.scores_enabled else None
        self.dlq = raw(settings.dlq_topic)

    def publish(self, result: BatchResult) -> None:
        """Queue every output of a batch on the producer buffer (sends are not awaited here)."""
        for out in result.outputs:
            if self.scores is not None:
                self.scores.send_soon(key=out.key, value=out.value)
            if out.anomaly:
                self.anomalies.send_soon(key=out.key, value=out.value)
        for dead in result.dead:
            log.warning("%s -> DLQ (%s): %s", dead.record.where, dead.reason, dead)
            self.dlq.send_soon(
                key=dead.record.key,
                value=dead.record.value,
                headers=dead.headers(result.detected_at),
            )


def create_app(
    settings: Settings, scorer: BatchScorer, observers: Sequence[BatchObserver] = ()
) -> tuple[faust.App, Topics]:
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers],
        broker_credentials=faust_credentials(settings),
        broker_commit_interval=settings.commit_interval,
        consumer_auto_offset_reset=settings.auto_offset_reset,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        # No tables and no leader election: the worker is stateless.
        topic_disable_leader=True,
        store="memory://",
        datadir=str(settings.data_dir),
        web_enabled=settings.metrics_port > 0,
        web_port=settings.metrics_port or 6066,
        web_bind=settings.metrics_host,
        producer_max_request_size=max(1_048_576, 2 * settings.max_message_bytes),
        stream_buffer_maxsize=max(4096, 2 * settings.batch_size),
    )
    topics = Topics(app, settings)

    @app.agent(topics.images, name="score")
    async def score(stream: faust.StreamT[bytes]) -> None:
        # take_events is on the concrete Stream, not on faust's StreamT protocol.
        assert isinstance(stream, faust.Stream)
        batches = stream.take_events(settings.batch_size, within=settings.batch_window)
        async for events in batches:
            started = time.perf_counter()
            result = scorer.process([to_record(e) for e in events])
            topics.publish(result)
            elapsed = time.perf_counter() - started
            for observe in observers:
                observe(result, elapsed)

    return app, topics
