"""The models topic: how published models are laid out, written and read back.

A compacted topic (one partition: one order for every record) with three kinds of key per
model name NAME:

| key            | value                                   | what it is                           |
| ---            | ---                                     | ---                                  |
| `NAME`         | the ONNX graph, or a `ModelLocation`    | the live model every worker follows  |
| `NAME#shadow`  | the same, or nothing (a tombstone)      | the candidate scored in shadow       |
| `NAME@SHA256`  | the same                                | every version ever published, kept   |
|                |                                         | by compaction for `list`/`rollback`  |

Compaction keeps only the newest record per key, so the live key alone could not bring back
an older version: the archive keys do. Every record carries headers: version, sha256, the
model's metadata (without its bulky reference data), what it holds (`onnx` bytes or a `uri`),
its role, the action that wrote it, who published it, and, for a model that became live,
when (`activated_at`), so that a starting worker can tell which valid model was live last.
"""

import getpass
import hashlib
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.config import Settings
from service.errors import PixelwatchError
from service.kafka.options import client_options
from service.kafka.topics import connect_admin, wait_for_partitions
from service.schemas import HEADER_MODEL_SHA256, HEADER_MODEL_VERSION
from service.scoring.model import Model
from service.untrusted import clean

Role = Literal["live", "shadow", "archive"]
Payload = Literal["onnx", "uri"]
Action = Literal["push", "rollback", "promote", "discard"]

HEADER_METADATA: Final = "pixelwatch.model.metadata"
HEADER_PAYLOAD: Final = "pixelwatch.model.payload"
HEADER_ROLE: Final = "pixelwatch.model.role"
HEADER_ACTION: Final = "pixelwatch.model.action"
HEADER_ACTIVATED_AT: Final = "pixelwatch.model.activated_at"
HEADER_PUBLISHED_BY: Final = "pixelwatch.model.published_by"
HEADER_PUBLISHED_AT: Final = "pixelwatch.model.published_at"
HEADER_SIZE: Final = "pixelwatch.model.size"

SHADOW_SUFFIX: Final = "#shadow"
ARCHIVE_SEPARATOR: Final = "@"
MAX_MODEL_BYTES: Final = 1 << 30
"""The largest graph a worker fetches from a URI (1 GiB)."""
FETCH_TIMEOUT: Final = 60.0

TOPIC_CONFIG: Final = {
    "cleanup.policy": "compact",
    # Every record is kept until compaction replaces it by a newer one of its key: nothing
    # expires by age, whatever the broker's default retention.
    "retention.ms": "-1",
    "max.message.bytes": str(4 << 20),
}


class RegistryError(PixelwatchError):
    """The models topic cannot be read or written, or holds no such model."""


class TopicMissing(RegistryError):
    """The topic does not exist (yet)."""


class ModelLocation(BaseModel):
    """The value of a record whose graph is too large for a Kafka message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(pattern=r"^(file|https?)://", max_length=2048)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0, le=MAX_MODEL_BYTES)


def live_key(name: str) -> str:
    return name


def shadow_key(name: str) -> str:
    return name + SHADOW_SUFFIX


def archive_key(name: str, sha256: str) -> str:
    return f"{name}{ARCHIVE_SEPARATOR}{sha256}"


def parse_key(key: str) -> tuple[str, Role]:
    if key.endswith(SHADOW_SUFFIX):
        return key.removesuffix(SHADOW_SUFFIX), "shadow"
    name, separator, _ = key.partition(ARCHIVE_SEPARATOR)
    return (name, "archive") if separator else (key, "live")


@dataclass(frozen=True)
class ModelRecord:
    """One record read back from the models topic. Everything in it is untrusted."""

    key: str
    name: str
    role: Role
    value: bytes | None
    headers: Mapping[str, str]
    partition: int
    offset: int
    timestamp_ms: int

    @property
    def tombstone(self) -> bool:
        return self.value is None

    @property
    def version(self) -> str:
        return self.headers.get(HEADER_MODEL_VERSION, "")

    @property
    def sha256(self) -> str:
        return self.headers.get(HEADER_MODEL_SHA256, "")

    @property
    def payload(self) -> str:
        return self.headers.get(HEADER_PAYLOAD, "onnx")

    @property
    def activated_at(self) -> str | None:
        """When this model last became live (ISO 8601), if it ever did."""
        return self.headers.get(HEADER_ACTIVATED_AT) or None

    @property
    def metadata(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.headers.get(HEADER_METADATA, "{}"))
        except orjson.JSONDecodeError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def size(self) -> int | None:
        text = self.headers.get(HEADER_SIZE, "")
        return int(text) if text.isdigit() else None

    @property
    def published_at(self) -> str:
        return self.headers.get(HEADER_PUBLISHED_AT, "")

    @property
    def published_by(self) -> str:
        return self.headers.get(HEADER_PUBLISHED_BY, "")

    @property
    def action(self) -> str:
        return self.headers.get(HEADER_ACTION, "")

    def describe(self) -> str:
        """Version and short hash, safe for a log line."""
        return f"{clean(self.version, 64) or '?'} ({clean(self.sha256, 64)[:12] or '?'})"

    def location(self) -> ModelLocation:
        try:
            return ModelLocation.model_validate_json(self.value or b"")
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "value"
            problem = f"{where}: {first['msg']}"
            raise RegistryError(f"the model's location is invalid ({problem})") from None

    def graph(self) -> bytes:
        """The ONNX bytes: the value itself, or fetched from the location it names."""
        if self.value is None:
            raise RegistryError("a tombstone holds no model")
        if self.payload != "uri":
            return self.value
        return fetch(self.location())


def from_consumer(record: ConsumerRecord) -> ModelRecord | None:
    """A consumed record as a ModelRecord; None for a key that is not text."""
    try:
        key = bytes(record.key or b"").decode()
    except UnicodeDecodeError:
        return None
    if not key:
        return None
    name, role = parse_key(key)
    headers = {k: bytes(v or b"").decode("utf-8", errors="replace") for k, v in record.headers}
    return ModelRecord(
        key=key,
        name=name,
        role=role,
        value=None if record.value is None else bytes(record.value),
        headers=headers,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
    )


def metadata_summary(model: Model) -> dict[str, Any]:
    """The model's metadata for a header: everything but the golden images and histogram."""
    summary: dict[str, Any] = model.metadata.model_dump(
        mode="json", exclude={"golden", "reference"}
    )
    summary["golden_images"] = len(model.metadata.golden.pixels) if model.metadata.golden else 0
    reference = model.metadata.reference
    summary["reference"] = reference.source if reference else None
    return summary


def publisher() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Publication:
    """A record to write to the models topic."""

    key: str
    value: bytes | None
    headers: list[tuple[str, bytes]]


def publications(
    name: str,
    value: bytes,
    payload: Payload,
    *,
    model: Model,
    size: int,
    role: Literal["live", "shadow"],
    action: Action,
) -> list[Publication]:
    """The archive record and the live (or shadow) record for a model being published."""
    at = now_iso()
    headers: dict[str, str] = {
        HEADER_MODEL_VERSION: model.version,
        HEADER_MODEL_SHA256: model.sha256,
        HEADER_METADATA: orjson.dumps(metadata_summary(model)).decode(),
        HEADER_PAYLOAD: payload,
        HEADER_SIZE: str(size),
        HEADER_ACTION: action,
        HEADER_PUBLISHED_BY: publisher(),
        HEADER_PUBLISHED_AT: at,
    }
    return _pair(name, value, headers, role, at if role == "live" else None)


def republications(
    name: str, record: ModelRecord, *, role: Literal["live", "shadow"], action: Action
) -> list[Publication]:
    """An already published model (an archive or shadow record) written again as `role`."""
    if record.value is None:
        raise RegistryError("a tombstone cannot be published")
    at = now_iso()
    headers = dict(record.headers)
    headers.pop(HEADER_ROLE, None)
    headers.pop(HEADER_ACTIVATED_AT, None)
    headers |= {HEADER_ACTION: action, HEADER_PUBLISHED_BY: publisher(), HEADER_PUBLISHED_AT: at}
    return _pair(name, record.value, headers, role, at if role == "live" else None)


def _pair(
    name: str,
    value: bytes,
    headers: dict[str, str],
    role: Literal["live", "shadow"],
    activated_at: str | None,
) -> list[Publication]:
    sha256 = headers[HEADER_MODEL_SHA256]
    archive = dict(headers, **{HEADER_ROLE: "archive"})
    target = dict(headers, **{HEADER_ROLE: role})
    if activated_at is not None:
        archive[HEADER_ACTIVATED_AT] = activated_at
        target[HEADER_ACTIVATED_AT] = activated_at
    key = live_key(name) if role == "live" else shadow_key(name)
    return [
        Publication(archive_key(name, sha256), value, _encoded(archive)),
        Publication(key, value, _encoded(target)),
    ]


def tombstone(name: str) -> Publication:
    """Removes the shadow of `name`."""
    headers = {
        HEADER_ROLE: "shadow",
        HEADER_ACTION: "discard",
        HEADER_PUBLISHED_BY: publisher(),
        HEADER_PUBLISHED_AT: now_iso(),
    }
    return Publication(shadow_key(name), None, _encoded(headers))


def _encoded(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(key, value.encode()) for key, value in headers.items()]


def fetch(location: ModelLocation) -> bytes:
    """The graph a location names, read from a file or over HTTP(S), checked against its
    declared size (its sha256 is checked by whoever loads it)."""
    limit = location.size  # at most MAX_MODEL_BYTES
    parsed = urllib.parse.urlparse(location.uri)
    where = clean(location.uri, 200)
    try:
        if parsed.scheme == "file":
            path = Path(urllib.parse.unquote(parsed.path))
            with path.open("rb") as handle:
                data = handle.read(limit + 1)
        else:
            request = urllib.request.Request(location.uri, headers={"User-Agent": "pixelwatch"})
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
                data = response.read(limit + 1)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise RegistryError(f"cannot fetch {where}: {clean(str(reason), 200)}") from None
    if len(data) != location.size:
        held = f"more than {limit}" if len(data) > limit else str(len(data))
        raise RegistryError(
            f"{where} holds {held} bytes, not the {location.size} the record declares"
        )
    return data


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CHUNKS_CONFIG: Final = {"retention.ms": str(24 * 3600 * 1000)}
"""The window's chunks topic: a chunk is in the table within seconds; a day is plenty."""
CHANGELOG_CONFIG: Final = {"cleanup.policy": "compact"}
"""The window table's changelog: the newest window per model is all that matters."""


async def create_missing(
    settings: Settings, topics: Mapping[str, Mapping[str, str]], wait: float
) -> list[str]:
    """Create each of `topics` (name -> config) that does not exist, with one partition;
    return the names created. The models topic, the window's chunks and its changelog
    (faust would create that one too, but racing its own metadata) are made this way."""
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = await connect_admin(settings, wait)
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, 1, settings.replication_factor, topic_configs=dict(config))
            for name, config in topics.items()
            if name not in existing
        ]
        if not missing:
            return []
        response = await admin.create_topics(missing)
        created = []
        for name, code, *message in response.topic_errors:
            if code and code != TopicAlreadyExistsError.errno:
                detail = message[0] if message and message[0] else f"error code {code}"
                raise RegistryError(f"cannot create topic {name}: {detail}")
            if not code:
                created.append(name)
        return created
    finally:
        await admin.close()


def consumer(settings: Settings) -> AIOKafkaConsumer:
    """A reader of the models topic in no consumer group: every caller reads everything."""
    return AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )


async def assign_all(
    reader: AIOKafkaConsumer, settings: Settings, topic: str, wait: float
) -> list[TopicPartition]:
    """Assign every partition of `topic` from its beginning; the partitions assigned."""
    try:
        partitions = await wait_for_partitions(settings, topic, wait)
    except PixelwatchError as exc:
        raise TopicMissing(f"{exc} (a worker creates it)") from None
    assigned = [TopicPartition(topic, p) for p in partitions]
    reader.assign(assigned)
    await reader.seek_to_beginning(*assigned)
    return assigned


async def read_to_end(
    reader: AIOKafkaConsumer, assigned: Iterable[TopicPartition]
) -> list[ModelRecord]:
    """Every record from the current positions up to the end offsets as of now, in order."""
    assigned = list(assigned)
    ends = await reader.end_offsets(assigned)
    records: list[ModelRecord] = []
    while True:
        behind = [tp for tp, end in ends.items() if await reader.position(tp) < end]
        if not behind:
            break
        batch = await reader.getmany(*assigned, timeout_ms=500)
        for tp in assigned:
            for raw in batch.get(tp, []):
                record = from_consumer(raw)
                if record is not None:
                    records.append(record)
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


async def read_topic(settings: Settings, topic: str, wait: float = 30.0) -> list[ModelRecord]:
    """Everything on `topic` now (the models topic, or a table's changelog)."""
    reader = consumer(settings)
    try:
        await reader.start()
    except Exception as exc:  # aiokafka raises its own types for an unreachable broker
        raise RegistryError(f"Kafka at {settings.bootstrap} not reachable ({exc})") from None
    try:
        assigned = await assign_all(reader, settings, topic, wait)
        return await read_to_end(reader, assigned)
    finally:
        await reader.stop()


async def publish(settings: Settings, records: list[Publication]) -> None:
    """Write `records` in order and wait until the broker has every one of them."""
    producer = AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        enable_idempotence=True,
        max_request_size=int(TOPIC_CONFIG["max.message.bytes"]),
    )
    try:
        await producer.start()
    except Exception as exc:
        raise RegistryError(f"Kafka at {settings.bootstrap} not reachable ({exc})") from None
    try:
        for record in records:  # one at a time: the order is the meaning
            await producer.send_and_wait(
                settings.models_topic, value=record.value, key=record.key.encode(),
                headers=record.headers,
            )  # fmt: skip
    except Exception as exc:
        raise RegistryError(f"cannot write to {settings.models_topic}: {exc}") from None
    finally:
        await producer.stop()
