"""The fault suite's instruments: a producer that knows what the broker took, and an
independent consumer that counts what came out.

Identity is where a message was consumed: its input partition and offset (and image index).
Every acknowledged input must reach the scores topic or the dead-letter topic at least once;
the consumer reads both from their start, apart from any worker, and counts each input's
answers. Output records carry the time the worker produced them, so the same consumer also
tells when each input partition was answered again after a fault.
"""

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from service.schemas import HEADER_INDEX, HEADER_OFFSET, HEADER_PARTITION

Outgoing = tuple[bytes, bytes, list[tuple[str, bytes]]]
Where = tuple[int, int]  # input partition and offset
Answer = tuple[int, int, int]  # input partition, offset and image index (-1: whole message)

WHOLE: Final = -1


@dataclass
class Stream:
    """A producer thread: `messages` at `rate` per second; remembers what the broker took.

    It retries for five minutes, so a broker outage delays sending but loses nothing."""

    bootstrap: str
    topic: str
    acked: dict[Where, bytes] = field(default_factory=dict)  # -> key
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _running: threading.Event = field(default_factory=threading.Event)  # clear: paused
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._running.set()

    def _producer(self) -> Producer:
        return Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 300_000,
                "message.max.bytes": 2_000_000,  # the poison set's near-1 MiB input
                "allow.auto.create.topics": False,
                "log_level": 0,  # the outage's connection errors are the worker's to report
            }
        )

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        with self._lock:
            if error is not None:
                self.failed.append(error.name())
            else:
                where = (int(message.partition() or 0), int(message.offset() or 0))
                self.acked[where] = message.key() or b""

    def send(self, messages: Iterable[Outgoing], rate: float = 0.0) -> None:
        """Send all of `messages` in this thread, at `rate` per second (0: at once)."""
        producer = self._producer()
        self._run(producer, iter(messages), rate)
        producer.flush(300)

    def start(self, messages: Iterator[Outgoing], rate: float) -> None:
        """Send `messages` from a thread of its own until they run out or `stop()`."""
        producer = self._producer()

        def run() -> None:
            self._run(producer, messages, rate)
            producer.flush(300)

        self._thread = threading.Thread(target=run, name="chaos-stream", daemon=True)
        self._thread.start()

    def _run(self, producer: Producer, messages: Iterator[Outgoing], rate: float) -> None:
        started = time.monotonic()
        for n, (key, value, headers) in enumerate(messages):
            if self._stop.is_set():
                break
            if not self._running.is_set():
                paused = time.monotonic()
                producer.flush(300)
                while not self._running.wait(0.1) and not self._stop.is_set():
                    pass
                started += time.monotonic() - paused  # the pause does not count as lag
            if rate > 0:
                ahead = started + n / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            sendable: list[tuple[str, str | bytes | None]] = list(headers)
            while True:
                try:
                    producer.produce(
                        self.topic, value, key, headers=sendable, on_delivery=self._delivered
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)

    def pause(self) -> None:
        """Stop sending until `resume()`; returns once what was sent is acknowledged."""
        self._running.clear()
        deadline = time.monotonic() + 60
        seen = -1
        while seen != self.sent and time.monotonic() < deadline:
            seen = self.sent
            time.sleep(1.0)

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(330)

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self.acked)


@dataclass
class Tally:
    """The independent consumer: every answer in the scores and dead-letter topics."""

    bootstrap: str
    topics: list[str]
    answers: Counter[Answer] = field(default_factory=Counter)
    # Per input partition, when the worker produced each answer and when this reader got it
    # (ms since the epoch): an exactly_once answer is visible only once its transaction commits.
    times: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    reasons: dict[Where, str] = field(default_factory=dict)  # dead letters' reasons
    dead: dict[Where, bytes | None] = field(default_factory=dict)  # dead letters' values
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "chaos-tally",  # never joined: partitions are assigned
                "enable.auto.commit": False,
                # What a downstream consumer should see: committed transactions only.
                "isolation.level": "read_committed",
                # An output topic deleted and created again starts at offset 0, behind this
                # reader's position: read it from its start, not from its end (the default),
                # or the answers written to it before the reset go uncounted.
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 4_000_000,
                "log_level": 0,
            }
        )
        metadata = consumer.list_topics(timeout=30)
        assigned = [
            TopicPartition(topic, p, -2)  # OFFSET_BEGINNING
            for topic in self.topics
            for p in metadata.topics[topic].partitions
        ]
        consumer.assign(assigned)

        def run() -> None:
            try:
                while not self._stop.is_set():
                    for message in consumer.consume(1000, 0.2):
                        if message.error() is None:
                            self._count(message)
            finally:
                consumer.close()

        self._thread = threading.Thread(target=run, name="chaos-tally", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _count(self, message: Message) -> None:
        answer = source_of(message)
        if answer is None:
            return
        _, produced_ms = message.timestamp()
        with self._lock:
            self.answers[answer] += 1
            self.times.setdefault(answer[0], []).append((produced_ms, int(time.time() * 1000)))
            headers = dict(message.headers() or [])
            if "pixelwatch.error.reason" in headers:
                where = (answer[0], answer[1])
                reason = headers["pixelwatch.error.reason"]
                self.reasons[where] = reason.decode() if isinstance(reason, bytes) else ""
                self.dead[where] = message.value()

    def found(self, wanted: Iterable[Where]) -> set[Where]:
        with self._lock:
            answered = {(p, o) for p, o, _ in self.answers}
        return answered & set(wanted)

    def duplicates(self, wanted: Iterable[Where]) -> int:
        keys = set(wanted)
        with self._lock:
            return sum(n - 1 for (p, o, _), n in self.answers.items() if (p, o) in keys)

    def first_after(self, partition: int, moment_ms: int) -> int | None:
        """When this reader first got an answer the worker produced after `moment_ms`."""
        with self._lock:
            later = [seen for made, seen in self.times.get(partition, []) if made > moment_ms]
        return min(later) if later else None

    def wait_for(self, wanted: Iterable[Where], timeout: float) -> set[Where]:
        """Wait until every input in `wanted` is answered, or `timeout`; what was found."""
        keys = set(wanted)
        deadline = time.monotonic() + timeout
        while (found := self.found(keys)) != keys and time.monotonic() < deadline:
            time.sleep(0.5)
        return found

    def resumed(self, moment: float, partitions: int, timeout: float = 90.0) -> float | None:
        """Seconds from `moment` (epoch s) until every input partition was answered again, as
        this read_committed reader sees it: the failover time, when a worker died at
        `moment` and the stream kept flowing."""
        since = int(moment * 1000)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            firsts = [self.first_after(p, since) for p in range(partitions)]
            if all(f is not None for f in firsts):
                return max(f for f in firsts if f is not None) / 1000 - moment
            time.sleep(0.2)
        return None


def source_of(message: Message) -> Answer | None:
    """The input partition, offset and image index an output or dead letter answers."""
    headers = dict(message.headers() or [])
    if HEADER_OFFSET in headers:
        index = headers.get(HEADER_INDEX)
        return (
            int(_text(headers[HEADER_PARTITION])),
            int(_text(headers[HEADER_OFFSET])),
            int(_text(index)) if index else WHOLE,
        )
    try:
        source: dict[str, Any] = orjson.loads(message.value() or b"")["source"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    index = source.get("index")
    return int(source["partition"]), int(source["offset"]), WHOLE if index is None else index


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""


def create_topic(bootstrap: str, name: str, partitions: int, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    [future] = admin.create_topics([NewTopic(name, partitions, 1, config=config)]).values()
    future.result(timeout=60)


def delete_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    [future] = admin.delete_topics([name]).values()
    future.result(timeout=60)
    deadline = time.monotonic() + 60
    while name in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{name} was not deleted"
        time.sleep(0.2)


def wait_for_topics(bootstrap: str, names: list[str], timeout: float = 120.0) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=10).topics
        if all(n in topics and topics[n].partitions for n in names):
            return
        assert time.monotonic() < deadline, f"topics {names} were not created"
        time.sleep(0.2)


@contextmanager
def tallied(bootstrap: str, topics: list[str]) -> Iterator[Tally]:
    tally = Tally(bootstrap, topics)
    tally.start()
    try:
        yield tally
    finally:
        tally.stop()
