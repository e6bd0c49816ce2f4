"""Which consumed offsets may be committed: only those whose every output is confirmed.

Each consumed batch is kept until a *barrier*: a moment when the producer holds no
unconfirmed record (`flush` returned with nothing left) and every refused one has been
replaced. All batches opened before a barrier are then safe to commit, in one go. The
producer reports only failures (librdkafka's `delivery.report.only.error`), so a confirmed
output costs no Python call at all; the loop passes a barrier every `commit_interval`, on a
rebalance and on shutdown.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message

TopicPartitionKey = tuple[str, int]


class Record(Protocol):
    """A produced record as the delivery callback hands it back (a confluent-kafka Message)."""

    def topic(self) -> str | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Unsent:
    """A record `produce` refused at once (unknown topic, too large): shaped like a Message
    so that it is replaced exactly as a record the broker refused later."""

    topic_: str
    key_: bytes | None
    value_: bytes | None
    headers_: Any

    def topic(self) -> str:
        return self.topic_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def headers(self) -> Any:
        return self.headers_


@dataclass(slots=True)
class Failure:
    """A produced record the broker refused, or that timed out, or that was never queued."""

    error: KafkaError
    record: Record  # as produced: topic, key, value, headers


class Ledger:
    """The batches consumed since the last barrier, and the offsets they advance to."""

    def __init__(self) -> None:
        self._batches: list[Sequence[Message]] = []
        self._offsets: dict[TopicPartitionKey, int] = {}  # next to consume, per partition
        self._first: dict[TopicPartitionKey, int] = {}  # first consumed, per partition
        # (partition, offset) -> message, built when a refused output needs its input
        self._index: dict[tuple[int | None, int | None], Message] | None = None
        self.in_flight = 0  # consumed messages since the last barrier
        # (partition, offset) of inputs dead-lettered for a refused output since the barrier
        self.replaced: set[tuple[int | None, int | None]] = set()

    def open(self, messages: Sequence[Message]) -> None:
        offsets = self._offsets
        for message in messages:
            key = (str(message.topic()), int(message.partition() or 0))
            offset = int(message.offset() or 0) + 1
            if offset > offsets.get(key, -1):
                offsets[key] = offset
            self._first.setdefault(key, offset - 1)
        self._batches.append(messages)
        self.in_flight += len(messages)
        self._index = None

    def settle(self) -> dict[TopicPartitionKey, int]:
        """At a barrier: every batch is delivered; their highest offsets per partition."""
        safe, self._offsets = self._offsets, {}
        self._first = {}
        self._batches.clear()
        self._index = None
        self.replaced.clear()
        self.in_flight = 0
        return safe

    def pending(self) -> dict[TopicPartitionKey, int]:
        """The offsets the batches since the barrier advance to (nothing settled)."""
        return dict(self._offsets)

    def rewind(self) -> dict[TopicPartitionKey, int]:
        """Drop every batch since the barrier (their outputs were aborted): per partition,
        the first offset to consume again."""
        first = self._first
        self.settle()
        return first

    def source(self, partition: int, offset: int) -> Message | None:
        """The message consumed since the barrier at (partition, offset) of the input topic.

        Indexed once per barrier period: when an output topic refuses everything, every
        record's lookup is then a dict access, not a scan of all messages in flight.
        """
        if self._index is None:
            self._index = {(m.partition(), m.offset()): m for b in self._batches for m in b}
        return self._index.get((partition, offset))

    def forget(self, partitions: set[TopicPartitionKey]) -> None:
        """Partitions lost without a revoke: their offsets belong to another worker now."""
        for key in partitions:
            self._offsets.pop(key, None)
            self._first.pop(key, None)
