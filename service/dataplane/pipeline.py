"""The worker's batch logic, free of any Kafka client: consumed messages in, outputs and dead
letters out, with one onnxruntime call per batch.

Every image ends in exactly one place: an output (the scores topic, and the anomalies topic
when flagged) or a dead letter (the original bytes, the reason in headers). A message that
carries several images is answered image by image.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

import numpy as np
import orjson
from confluent_kafka import Message
from numpy.typing import NDArray

from service.dataplane.decode import WHOLE, Decoded, Decoder, Reject, out_of_range, value_problem
from service.dataplane.encode import RecordEncoder
from service.dataplane.shadow import ShadowVerdicts
from service.dataplane.tracecontext import Carried, continued
from service.schemas import (
    DEAD_LETTER_HEADERS,
    HEADER_FAILED_AT,
    HEADER_INDEX,
    HEADER_MESSAGE,
    HEADER_MODEL_SHA256,
    HEADER_MODEL_VERSION,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
    DeadLetterReason,
    OutputFormat,
)
from service.scoring.images import ImageShape
from service.scoring.model import Model
from service.scoring.similarity import METRICS, MetricName
from service.untrusted import clean

log = logging.getLogger(__name__)

Reason = DeadLetterReason
# As confluent-kafka types produced headers (a list is invariant, so the value type is wide).
Header = tuple[str, str | bytes | None]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message, or one image of it, that goes to the dead-letter topic."""

    message: Message
    index: int  # image index within the message, or WHOLE
    reason: DeadLetterReason
    text: str
    value: bytes | None = None  # None: the message's own value, byte for byte

    @property
    def where(self) -> str:
        m = self.message
        at = f"{m.topic()}[{m.partition()}]@{m.offset()}"
        return at if self.index == WHOLE else f"{at}#{self.index}"

    def payload(self) -> bytes | None:
        return self.message.value() if self.value is None else self.value

    def headers(self, failed_at: str) -> list[Header]:
        m = self.message
        own: list[Header] = [
            (HEADER_REASON, self.reason.value.encode()),
            (HEADER_MESSAGE, self.text.encode()),
            (HEADER_TOPIC, str(m.topic()).encode()),
            (HEADER_PARTITION, str(m.partition()).encode()),
            (HEADER_OFFSET, str(m.offset()).encode()),
        ]
        if self.index != WHOLE:
            own.append((HEADER_INDEX, str(self.index).encode()))
        own.append((HEADER_FAILED_AT, failed_at.encode()))
        # The input's own headers (a binary format, the trace context) travel along for
        # replay; the trace continues with a span id of the dead letter's own.
        headers = m.headers() or []
        pairs = headers.items() if isinstance(headers, dict) else headers
        original: list[Header] = continued(
            (key, value) for key, value in pairs if not key.startswith(DEAD_LETTER_HEADERS)
        )
        return original + own


@dataclass(slots=True)
class BatchResult:
    """What one batch produced; `scores` and `anomalies` are (key, value) pairs to send."""

    messages: Sequence[Message]
    scores: list[tuple[bytes, bytes]] = field(default_factory=list)
    anomalies: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    similarity: NDArray[np.float32] = field(default_factory=lambda: np.empty(0, np.float32))
    ts_ms: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    headers: list[Header] = field(default_factory=list)
    detected_at: str = ""
    # Row i of these is scored image i (as in `similarity`): what a shadow model needs to
    # score the same images without decoding them again.
    pixels: NDArray[np.float32] = field(default_factory=lambda: np.empty((0, 0), np.float32))
    anomaly: NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, np.bool_))
    keys: list[bytes] = field(default_factory=list)
    # rows[i]: the position in `messages` of scored image i. Each scores record is one row's,
    # in order, unless scores are grouped by message (`score_origins` then says whose).
    rows: list[int] = field(default_factory=list)
    score_origins: list[int] | None = None
    anomaly_origins: list[int] | None = None  # None: the flagged rows' own, in order
    shadow: ShadowVerdicts | None = None  # set by the data plane when a shadow scores
    # What each input hands on to its outputs (trace context, passed headers), by position
    # in `messages`; None when no input of the batch hands anything on. Set by the data plane.
    carried: list[Carried | None] | None = None

    @property
    def scored(self) -> int:
        return len(self.similarity)

    @property
    def flagged(self) -> int:
        return len(self.anomalies)

    def scores_from(self) -> list[int]:
        """The position in `messages` of each scores record's input."""
        if self.score_origins is None:
            return self.rows if self.scores else []  # the scores topic may be off
        return self.score_origins

    def anomalies_from(self) -> list[int]:
        """The position in `messages` of each anomaly's input."""
        if self.anomaly_origins is not None:
            return self.anomaly_origins
        return [self.rows[row] for row in np.flatnonzero(self.anomaly).tolist()]

    def drop_outputs_of(self, positions: set[int]) -> None:
        """Removes the scores and anomalies made from the messages at these positions (their
        answer is a dead letter instead); the verdicts stay, for the shadow and the metrics."""
        scores = [
            (r, p)
            for r, p in zip(self.scores, self.scores_from(), strict=True)
            if p not in positions
        ]
        anomalies = [
            (r, p)
            for r, p in zip(self.anomalies, self.anomalies_from(), strict=True)
            if p not in positions
        ]
        self.scores, self.score_origins = [r for r, _ in scores], [p for _, p in scores]
        self.anomalies, self.anomaly_origins = [r for r, _ in anomalies], [p for _, p in anomalies]


MIN_MESSAGE_LIMIT: Final = 65_536
"""The size limit's floor: what an 8x8 model has always accepted."""
LIMIT_IMAGES: Final = 16
LIMIT_BYTES_PER_PIXEL: Final = 32  # a JSON float32 in its longest form, with its comma


def default_max_message_bytes(shape: ImageShape) -> int:
    """The largest message a model's worker accepts unless PIXELWATCH_MAX_MESSAGE_BYTES says
    otherwise: room for 16 images of its size in the most verbose JSON, and never less than
    64 KiB. So 8x8 keeps 65,536 bytes, 28x28 gets 401,408 and 64x64 2,097,152 (binary `u8`
    batches of 50 such images fit too); a fixed 64 KiB would refuse one JSON 64x64 image
    written with full float precision."""
    return max(MIN_MESSAGE_LIMIT, LIMIT_IMAGES * LIMIT_BYTES_PER_PIXEL * shape.size)


def _coordinates(message: Message, topics: dict[str, bytes] | None = None) -> tuple[str, bytes]:
    """A consumed message's default id, `topic:partition:offset`, and its `source` record
    without the closing brace (an image of a batch adds its index). `topics` keeps each
    topic's JSON for the rest of a batch."""
    topic = str(message.topic())
    partition, offset = int(message.partition() or 0), int(message.offset() or 0)
    if topics is None:
        topic_json = orjson.dumps(topic)
    elif (topic_json := topics.get(topic, b"")) == b"":
        topic_json = topics[topic] = orjson.dumps(topic)
    prefix = b'{"topic":%s,"partition":%d,"offset":%d' % (topic_json, partition, offset)
    return f"{topic}:{partition}:{offset}", prefix


class BatchScorer:
    """Decodes, scores (one onnxruntime call) and encodes a batch of consumed messages."""

    def __init__(
        self,
        model: Model,
        *,
        metric: MetricName | None = None,
        threshold: float | None = None,
        max_message_bytes: int | None = None,
        scores_format: OutputFormat | None = "compact",
        anomalies_format: OutputFormat = "full",
        scores_grouping: Literal["image", "message"] = "image",
    ) -> None:
        self.model = model
        self.metric: MetricName = metric or model.metadata.metric
        self.threshold = model.metadata.threshold if threshold is None else threshold
        self.scores_format = scores_format  # None: the scores topic is off
        self.anomalies_format = anomalies_format
        # "message": a message with several images gets one scores record for all of them.
        self.group_scores = scores_grouping == "message" and scores_format == "compact"
        if max_message_bytes is None:
            max_message_bytes = default_max_message_bytes(model.shape)
        self.decoder = Decoder(model.shape, max_message_bytes)
        # The parts of every output that only change with the model are serialised once.
        self._encoder = RecordEncoder(
            orjson.dumps({"version": model.version, "sha256": model.sha256}),
            self.metric,
            self.threshold,
            METRICS,
        )
        self.headers: list[Header] = [
            (HEADER_MODEL_VERSION, model.version.encode()),
            (HEADER_MODEL_SHA256, model.sha256.encode()),
        ]

    def process(self, messages: Sequence[Message]) -> BatchResult:
        """Score a batch; an exception is narrowed down to the messages that raise it.

        A message that makes our own code fail goes to the dead-letter topic with reason
        `internal` and the exception's name; the rest of the batch is answered as usual.
        """
        try:
            return self._process(messages)
        except Exception:
            if len(messages) == 1:
                raise
        log.exception("a batch of %d failed; scoring its messages one by one", len(messages))
        result = BatchResult(messages=messages, headers=self.headers)
        parts: list[BatchResult] = []
        positions: list[int] = []  # each part's message, by position in the batch
        for position, message in enumerate(messages):
            try:
                parts.append(self._process([message]))
                positions.append(position)
            except Exception as exc:
                text = clean(f"{type(exc).__name__}: {exc}", 300)
                result.dead.append(DeadLetter(message, WHOLE, Reason.INTERNAL, text))
        result.score_origins, result.anomaly_origins = [], []
        for position, part in zip(positions, parts, strict=True):
            result.scores += part.scores
            result.anomalies += part.anomalies
            result.dead += part.dead
            result.detected_at = part.detected_at
            result.rows += [position] * part.scored
            result.score_origins += [position] * len(part.scores)
            result.anomaly_origins += [position] * len(part.anomalies)
        if parts:
            result.similarity = np.concatenate([p.similarity for p in parts])
            result.ts_ms = np.concatenate([p.ts_ms for p in parts])
            scored = [p for p in parts if p.scored]
            if scored:
                result.pixels = np.concatenate([p.pixels for p in scored])
                result.anomaly = np.concatenate([p.anomaly for p in scored])
            result.keys = [key for p in parts for key in p.keys]
        return result

    def _process(self, messages: Sequence[Message]) -> BatchResult:
        detected_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        result = BatchResult(messages=messages, headers=self.headers, detected_at=detected_at)
        decoded = self.decoder.decode(list(messages))
        result.dead = [self._dead(messages, r) for r in decoded.rejects]
        if len(decoded):
            decoded = self._drop_out_of_range(decoded, messages, result)
        grouped: dict[int, list[bytes]] = {}
        singles: dict[int, tuple[bytes, bytes]] = {}
        if len(decoded):
            grouped, singles = self._score(decoded, messages, result)
        if self.group_scores:
            self._message_records(messages, grouped, singles, result)
        return result

    def _message_records(
        self,
        messages: Sequence[Message],
        grouped: dict[int, list[bytes]],
        singles: dict[int, tuple[bytes, bytes]],
        result: BatchResult,
    ) -> None:
        """The scores records in input order: a single image's own, and one per multi-image
        message with its scored images' verdicts in order and the indices of those
        dead-lettered instead, each with its reason."""
        position = {id(m): p for p, m in enumerate(messages)}
        dead: dict[int, list[tuple[int, str]]] = {}
        for letter in result.dead:
            if letter.index != WHOLE:
                dead.setdefault(position[id(letter.message)], []).append(
                    (letter.index, letter.reason.value)
                )
        result.score_origins = origins = []
        for p in sorted(grouped.keys() | dead.keys() | singles.keys()):
            origins.append(p)
            if p in singles:
                result.scores.append(singles[p])
                continue
            message = messages[p]
            default_id, prefix = _coordinates(message)
            key = message.key() or default_id.encode()
            verdicts, dead_here = grouped.get(p, []), sorted(dead.get(p, []))
            record = self._encoder.message(prefix + b"}", verdicts, dead_here)
            result.scores.append((key, record))

    def _dead(self, messages: Sequence[Message], reject: Reject) -> DeadLetter:
        return DeadLetter(
            messages[reject.message], reject.index, reject.reason, reject.text, reject.value
        )

    def _drop_out_of_range(
        self, decoded: Decoded, messages: Sequence[Message], result: BatchResult
    ) -> Decoded:
        """One range check for the whole batch, not one per message."""
        bad = out_of_range(decoded.pixels)
        if not bad.any():
            return decoded
        for row in np.flatnonzero(bad).tolist():
            text = value_problem(decoded.pixels[row])
            message = messages[decoded.message[row]]
            letter = DeadLetter(
                message, decoded.index[row], Reason.PIXEL_VALUE, text, decoded.dead_value(row)
            )
            result.dead.append(letter)
        keep = np.flatnonzero(~bad).tolist()
        return Decoded(
            pixels=decoded.pixels[~bad],
            message=[decoded.message[k] for k in keep],
            index=[decoded.index[k] for k in keep],
            ids=[decoded.ids[k] for k in keep],
            ts=[decoded.ts[k] for k in keep],
            values=[decoded.values[k] for k in keep],
            rejects=decoded.rejects,
        )

    def _score(
        self, decoded: Decoded, messages: Sequence[Message], result: BatchResult
    ) -> tuple[dict[int, list[bytes]], dict[int, tuple[bytes, bytes]]]:
        """Scores the decoded images into `result`. When scores are grouped by message, it
        returns the scores records instead, by message position in the batch: each
        multi-image message's verdicts, and each single image's record."""
        scored = self.model.score(decoded.pixels, metric=self.metric, threshold=self.threshold)
        similarity = scored.similarity
        anomaly = scored.anomaly.tolist()
        numbers = self._encoder.numbers(
            np.column_stack([similarity, *(scored.scores[m] for m in METRICS)])
        )
        scores_format, anomalies_format = self.scores_format, self.anomalies_format
        encoder = self._encoder
        detected_at = orjson.dumps(result.detected_at)
        ts_ms: list[int] = []
        keys: list[bytes] = []
        add_ts, add_key = ts_ms.append, keys.append
        ids, indices, stamps = decoded.ids, decoded.index, decoded.ts
        # Per message, not per image: a batched message shares its coordinates (a message
        # of one image has one row, so it needs no entry).
        where: dict[int, tuple[str, bytes, int]] = {}
        topics: dict[str, bytes] = {}
        group = self.group_scores
        grouped: dict[int, list[bytes]] = {}  # message position -> its images' verdicts
        singles: dict[int, tuple[bytes, bytes]] = {}  # message position -> its record
        for row, position in enumerate(decoded.message):
            index = indices[row]
            known = None if index == WHOLE else where.get(position)
            if known is None:
                message = messages[position]
                default_id, prefix = _coordinates(message, topics)
                known = (default_id, prefix, message.timestamp()[1])
                if index != WHOLE:
                    where[position] = known
            default_id, prefix, kafka_ts = known
            ident = ids[row]
            if ident is None:
                ident = default_id if index == WHOLE else f"{default_id}:{index}"
            ts = stamps[row]
            if ts is None:
                ts = kafka_ts
            add_ts(ts)
            key = ident.encode()
            add_key(key)
            ident_json = orjson.dumps(ident)
            flagged = anomaly[row]
            grouped_image = group and index != WHOLE
            if grouped_image and not flagged:  # the common case of grouped scores: a verdict
                verdict = encoder.verdict(ident_json, index, False, numbers[row], ts)
                grouped.setdefault(position, []).append(verdict)
                continue
            source = prefix + (b"}" if index == WHOLE else b',"index":%d}' % index)
            # Each record form is encoded at most once, and only if a topic takes it.
            full = compact = b""
            if scores_format == "full" or (flagged and anomalies_format == "full"):
                full = encoder.full(
                    ident_json, flagged, numbers[row], decoded.pixels[row],
                    scored.reconstruction[row], source, ts, detected_at,
                )  # fmt: skip
            # A grouped image's scores record is its verdict, not a compact record.
            if (scores_format == "compact" and not grouped_image) or (
                flagged and anomalies_format == "compact"
            ):
                compact = encoder.compact(ident_json, flagged, numbers[row], source, ts)
            if grouped_image:
                verdict = encoder.verdict(ident_json, index, flagged, numbers[row], ts)
                grouped.setdefault(position, []).append(verdict)
            elif group:
                singles[position] = (key, compact)
            elif scores_format is not None:
                result.scores.append((key, full if scores_format == "full" else compact))
            if flagged:
                result.anomalies.append((key, full if anomalies_format == "full" else compact))
        result.similarity = similarity
        result.ts_ms = np.asarray(ts_ms, dtype=np.int64)
        result.pixels = decoded.pixels
        result.anomaly = scored.anomaly
        result.keys = keys
        result.rows = decoded.message
        return grouped, singles
