"""Which consumed offsets may be committed: only those whose every output is confirmed.

Each consumed batch is a `Flight`: it counts the records produced for it (outputs and dead
letters) that the broker has not confirmed yet. Flights settle oldest first, so per partition
the committed offset never moves past a message whose outputs are still in the air, even
when a younger batch happens to be confirmed sooner.
"""

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

TopicPartitionKey = tuple[str, int]


@dataclass(slots=True)
class Failure:
    """A produced record the broker refused, or that timed out."""

    flight: "Flight"
    error: KafkaError
    record: Message  # as produced: topic, key, value, headers


@dataclass(eq=False, slots=True)
class Flight:
    """One consumed batch on its way out."""

    messages: Sequence[Message]
    on_failure: Callable[[Failure], None]
    pending: int = 0
    sealed: bool = False  # every record of the batch has been handed to the producer
    offsets: dict[TopicPartitionKey, int] = field(default_factory=dict)  # next to consume
    replaced: set[tuple[int | None, int | None]] = field(default_factory=set)  # dead-lettered

    def __post_init__(self) -> None:
        for message in self.messages:
            key = (str(message.topic()), int(message.partition() or 0))
            offset = int(message.offset() or 0) + 1
            if offset > self.offsets.get(key, -1):
                self.offsets[key] = offset

    @property
    def done(self) -> bool:
        return self.sealed and self.pending == 0

    def produced(self) -> None:
        self.pending += 1

    def delivered(self, error: KafkaError | None, record: Message) -> None:
        """The producer's delivery callback (run by `poll`/`flush` on the loop's thread)."""
        if error is None:
            self.pending -= 1
        else:
            # Still pending: the failure handler decides what replaces it, then settles it.
            self.on_failure(Failure(self, error, record))

    def settle_failure(self) -> None:
        self.pending -= 1


class Ledger:
    """Flights in consumption order; hands out the offsets that became safe to commit."""

    def __init__(self) -> None:
        self._flights: deque[Flight] = deque()
        self.in_flight = 0  # consumed messages not yet settled

    def __len__(self) -> int:
        return len(self._flights)

    def open(self, messages: Sequence[Message], on_failure: Callable[[Failure], None]) -> Flight:
        flight = Flight(messages, on_failure)
        self._flights.append(flight)
        self.in_flight += len(messages)
        return flight

    def settle(self) -> dict[TopicPartitionKey, int]:
        """Pop the flights that are done, oldest first; their highest offsets per partition."""
        safe: dict[TopicPartitionKey, int] = {}
        while self._flights and self._flights[0].done:
            flight = self._flights.popleft()
            self.in_flight -= len(flight.messages)
            for key, offset in flight.offsets.items():
                if offset > safe.get(key, -1):
                    safe[key] = offset
        return safe

    def forget(self, partitions: set[TopicPartitionKey]) -> None:
        """Partitions lost without a revoke: their offsets belong to another worker now."""
        for flight in self._flights:
            for key in partitions & flight.offsets.keys():
                del flight.offsets[key]
