"""Which consumed offsets may be committed: only those whose every output is confirmed.

Each consumed batch is a `Flight`, kept until a *barrier*: a moment when the producer holds
no unconfirmed record (`flush` returned with nothing left) and every refused one has been
replaced. All flights opened before a barrier are then safe to commit, in one go. The
producer reports only failures (librdkafka's `delivery.report.only.error`), so a confirmed
output costs no Python call at all; the loop passes a barrier every `commit_interval`, on a
rebalance and on shutdown.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

TopicPartitionKey = tuple[str, int]


@dataclass(slots=True)
class Failure:
    """A produced record the broker refused, or that timed out."""

    error: KafkaError
    record: Message  # as produced: topic, key, value, headers


@dataclass(eq=False, slots=True)
class Flight:
    """One consumed batch on its way out."""

    messages: Sequence[Message]
    offsets: dict[TopicPartitionKey, int] = field(default_factory=dict)  # next to consume

    def __post_init__(self) -> None:
        for message in self.messages:
            key = (str(message.topic()), int(message.partition() or 0))
            offset = int(message.offset() or 0) + 1
            if offset > self.offsets.get(key, -1):
                self.offsets[key] = offset


class Ledger:
    """Flights since the last barrier, in consumption order."""

    def __init__(self) -> None:
        self._flights: list[Flight] = []
        self.in_flight = 0  # consumed messages since the last barrier
        # (partition, offset) of inputs dead-lettered for a refused output since the barrier
        self.replaced: set[tuple[int | None, int | None]] = set()

    def __len__(self) -> int:
        return len(self._flights)

    def open(self, messages: Sequence[Message]) -> Flight:
        flight = Flight(messages)
        self._flights.append(flight)
        self.in_flight += len(messages)
        return flight

    def settle(self) -> dict[TopicPartitionKey, int]:
        """At a barrier: every flight is delivered; their highest offsets per partition."""
        safe: dict[TopicPartitionKey, int] = {}
        for flight in self._flights:
            for key, offset in flight.offsets.items():
                if offset > safe.get(key, -1):
                    safe[key] = offset
        self._flights.clear()
        self.replaced.clear()
        self.in_flight = 0
        return safe

    def messages(self) -> Iterator[Message]:
        """Every message consumed since the barrier (to find the input of a refused output)."""
        for flight in self._flights:
            yield from flight.messages

    def forget(self, partitions: set[TopicPartitionKey]) -> None:
        """Partitions lost without a revoke: their offsets belong to another worker now."""
        for flight in self._flights:
            for key in partitions & flight.offsets.keys():
                del flight.offsets[key]
