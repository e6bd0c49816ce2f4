"""Replaying dead letters: back to the input topic, as their producer sent them.

A dead letter keeps its input's key and value bytes and the input's own headers; the worker
adds `pixelwatch.error.*`, `pixelwatch.source.*` and `pixelwatch.failed_at`. A replay sends the
key, the value and the input's headers only, so a message that fails again is dead-lettered
afresh, with one reason. The dead-letter topic is read from its start (or from `since`) up to
the end it had when the replay began; nothing is committed, so a replay can be repeated.

Everything to send is read, filtered and transformed first: a filter or transform that fails
stops the replay before a single message was sent.
"""

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, cast

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from service.config import Settings
from service.dataplane.loop import is_marker
from service.errors import PixelwatchError
from service.kafka.options import librdkafka_config
from service.schemas import DEAD_LETTER_HEADERS, HEADER_REASON
from service.untrusted import clean

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
Record = tuple[bytes | None, bytes, Headers]
Transform = Callable[[bytes | None, bytes, Headers], Record | None]

_READ_TIMEOUT: Final = 30.0  # seconds without a message before the read is given up


@dataclass(frozen=True)
class Filter:
    """Which dead letters to replay; every given condition must hold."""

    reasons: frozenset[str] = frozenset()
    since: datetime | None = None  # written to the dead-letter topic at or after
    id_prefix: str | None = None


@dataclass
class Replay:
    """What a replay read, chose and sent."""

    read: int = 0
    filtered_out: int = 0
    truncated: int = 0  # their value was replaced by a marker: nothing to replay
    dropped: int = 0  # the transform returned None
    records: list[Record] = field(default_factory=list)
    sent: int = 0


def load_transform(path: Path) -> Transform:
    """The `transform(key, value, headers)` function of a Python file."""
    if not path.is_file():
        raise PixelwatchError(f"{path}: transform file not found")
    spec = importlib.util.spec_from_file_location("pixelwatch_replay_transform", path)
    if spec is None or spec.loader is None:
        raise PixelwatchError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any exception is theirs to fix
        raise PixelwatchError(f"{path}: cannot load it ({type(exc).__name__}: {exc})") from None
    function = getattr(module, "transform", None)
    if not callable(function):
        raise PixelwatchError(f"{path}: defines no function transform(key, value, headers)")
    return cast(Transform, function)


def replayed_headers(headers: Sequence[tuple[str, bytes | None]]) -> Headers:
    """The input's own headers of a dead letter, without those the worker added."""
    return [(k, v or b"") for k, v in headers if not k.startswith(DEAD_LETTER_HEADERS)]


def record_id(key: bytes | None, value: bytes) -> str | None:
    """The image id a dead letter is known by: its key, else the `id` of its JSON value."""
    if key:
        return key.decode("utf-8", errors="replace")
    try:
        ident = orjson.loads(value).get("id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return ident if isinstance(ident, str) else None


def matches(wanted: Filter, key: bytes | None, value: bytes, headers: Headers, ts: int) -> bool:
    own = dict(headers)
    if wanted.reasons and own.get(HEADER_REASON, b"").decode() not in wanted.reasons:
        return False
    if wanted.since is not None and ts < wanted.since.timestamp() * 1000:
        return False
    if wanted.id_prefix is not None:
        ident = record_id(key, value)
        if ident is None or not ident.startswith(wanted.id_prefix):
            return False
    return True


def read_dead_letters(
    settings: Settings, wanted: Filter, transform: Transform | None = None
) -> Replay:
    """Every dead letter up to the topic's current end that `wanted` selects, transformed."""
    consumer = Consumer(
        librdkafka_config(settings)
        | {
            "group.id": f"{settings.group_id}.replay",  # never joined: partitions are assigned
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # Only dead letters of committed transactions (exactly_once): an aborted one's
            # input was answered again, and replaying it would answer it twice.
            "isolation.level": "read_committed",
        }
    )
    replay = Replay()
    try:
        ends = _assign(consumer, settings.dlq_topic, wanted.since)
        while ends:
            message = consumer.poll(_READ_TIMEOUT)
            if message is None:
                raise PixelwatchError(
                    f"{settings.dlq_topic}: no message within {_READ_TIMEOUT:.0f}s before its end"
                )
            partition, offset = int(message.partition() or 0), int(message.offset() or 0)
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                ends.pop(partition, None)
                continue
            if error is not None:
                raise PixelwatchError(f"{settings.dlq_topic}: {error.name()}: {error.str()}")
            end = ends.get(partition)
            if end is None or offset >= end:
                continue  # written after the replay began
            if offset + 1 >= end:
                del ends[partition]
            _choose(replay, message, wanted, transform)
    finally:
        consumer.close()
    return replay


def _assign(consumer: Consumer, topic: str, since: datetime | None) -> dict[int, int]:
    """Assign every partition from its start (or `since`); the end offset of each with data."""
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            raise PixelwatchError(f"topic {topic} does not exist")
        starts: list[TopicPartition] = []
        ends: dict[int, int] = {}
        for partition in sorted(described.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start = low
            if since is not None:
                at = int(since.timestamp() * 1000)
                [found] = consumer.offsets_for_times([TopicPartition(topic, partition, at)], 10)
                start = found.offset if found.offset >= 0 else high
            if start < high:
                starts.append(TopicPartition(topic, partition, start))
                ends[partition] = high
    except KafkaException as exc:
        raise PixelwatchError(f"cannot read {topic}: {exc.args[0].str()}") from None
    consumer.assign(starts)
    return ends


def _choose(replay: Replay, message: Message, wanted: Filter, transform: Transform | None) -> None:
    replay.read += 1
    key, value = message.key(), message.value() or b""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers: Headers = [(k, v.encode() if isinstance(v, str) else v or b"") for k, v in pairs]
    _, ts = message.timestamp()
    if not matches(wanted, key, value, headers, ts):
        replay.filtered_out += 1
        return
    if is_marker(value):
        replay.truncated += 1
        return
    kept = replayed_headers(headers)
    record: Record | None = (key, value, kept)
    if transform is not None:
        try:
            record = transform(key, value, kept)
        except Exception as exc:  # the user's code
            where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
            raise PixelwatchError(
                f"transform failed on {where}: {type(exc).__name__}: {clean(str(exc))}; "
                "nothing was sent"
            ) from None
    if record is None:
        replay.dropped += 1
        return
    if not _is_record(record):
        where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        raise PixelwatchError(
            f"transform returned {clean(repr(record), 80)} for {where}, not (key, value, "
            "headers) with bytes values or None; nothing was sent"
        )
    replay.records.append(record)


def _is_record(record: object) -> bool:
    if not isinstance(record, tuple) or len(record) != 3:
        return False
    key, value, headers = record
    return (
        isinstance(key, bytes | None)
        and isinstance(value, bytes)
        and isinstance(headers, list)
        and all(isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str) for h in headers)
    )


def send(settings: Settings, topic: str, records: list[Record], timeout: float = 60.0) -> int:
    """Send `records` to `topic` and wait for the broker to confirm each; how many it took."""
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Any) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer(librdkafka_config(settings) | {"enable.idempotence": True, "acks": "all"})
    for key, value, headers in records:
        sendable: list[tuple[str, str | bytes | None]] = list(headers)
        while True:
            try:
                producer.produce(topic, value, key, headers=sendable, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
    left = producer.flush(timeout)
    if failures or left:
        first = f"{failures[0].name()}: {failures[0].str()}" if failures else "timed out"
        raise PixelwatchError(
            f"{len(failures) + left} of {len(records)} messages were not delivered to {topic} "
            f"({first})"
        )
    return len(records)
