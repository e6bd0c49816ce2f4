"""The faust application: one agent that scores the input topic in batches.

The agent takes up to `batch_size` events (or what arrived within `batch_window`), scores
them with one onnxruntime call, and enqueues every output on the Kafka producer without
waiting for each delivery. faust acks the batch's events only after the loop body ran, and
flushes the producer before it commits offsets, so a committed offset always has its outputs
produced: at-least-once delivery.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import faust

from service.config import Settings
from service.dataplane.pipeline import BatchResult, BatchScorer, Record
from service.kafka.options import faust_credentials

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


class Send(Protocol):
    """faust's producer `send`: enqueue one record, return the delivery future."""

    def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> Awaitable[Any]: ...


class Publisher:
    """Sends a batch's outputs and dead letters through the app's Kafka producer.

    Records go straight to the underlying client (each await only enqueues; delivery is
    confirmed in bulk by the producer flush that faust runs before every offset commit).
    faust's `Topic.send_soon` buffer would instead send them one at a time.
    """

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.anomalies = settings.anomalies_topic
        self.scores = settings.scores_topic if settings.scores_enabled else None
        self.dlq = settings.dlq_topic
        self.send: Send | None = None  # tests substitute a recorder

    async def publish(self, result: BatchResult) -> None:
        send = self.send or self.app.producer.send
        for out in result.outputs:
            if self.scores is not None:
                await send(self.scores, out.key, out.value, None, None, None)
            if out.anomaly:
                await send(self.anomalies, out.key, out.value, None, None, None)
        for dead in result.dead:
            log.warning("%s -> DLQ (%s): %s", dead.record.where, dead.reason, dead.message)
            headers = dead.headers(result.detected_at)
            await send(self.dlq, dead.record.key, dead.record.value, None, None, headers)

    async def publish_whole(self, result: BatchResult) -> None:
        """Publish a batch even if the agent is cancelled meanwhile (e.g. on SIGTERM).

        faust acks a batch's events once the loop body is left, however it is left; a batch
        cut short would have its offsets committed without its outputs. So the sends run in
        their own task, and a cancellation waits for it before it is honoured.
        """
        task = asyncio.ensure_future(self.publish(result))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise


def create_app(
    settings: Settings,
    scorer: BatchScorer,
    observers: Sequence[BatchObserver] = (),
    on_crash: Callable[[BaseException], None] | None = None,
) -> tuple[faust.App, Publisher]:
    """The app and its publisher; `on_crash` hears of an exception that ends the agent (faust
    then restarts it, but the worker's health probe reports the crash)."""
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
    images = app.topic(
        settings.input_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    publisher = Publisher(app, settings)

    @app.agent(images, name="score")
    async def score(stream: faust.StreamT[bytes]) -> None:
        # take_events is on the concrete Stream, not on faust's StreamT protocol.
        assert isinstance(stream, faust.Stream)
        batches = stream.take_events(settings.batch_size, within=settings.batch_window)
        try:
            async for events in batches:
                started = time.perf_counter()
                result = scorer.process([to_record(e) for e in events])
                await publisher.publish_whole(result)
                elapsed = time.perf_counter() - started
                for observe in observers:
                    observe(result, elapsed)
        except Exception as exc:  # not CancelledError: a rebalance or a stop is no crash
            if on_crash is not None:
                on_crash(exc)
            raise

    return app, publisher
