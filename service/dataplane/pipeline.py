"""The worker's batch logic, free of Kafka and faust: records in, outputs and dead letters out.

Every record ends in exactly one place: an `Output` (published to scores, and to anomalies
when flagged) or a `DeadLetter` (published to the DLQ with the original bytes).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import ValidationError

from service.errors import InputError
from service.schemas import (
    HEADER_FAILED_AT,
    HEADER_MESSAGE,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
    DeadLetterReason,
    ImageMessage,
)
from service.scoring.images import ImageShape, parse_art
from service.scoring.model import Model
from service.scoring.similarity import METRICS, MetricName

Reason = DeadLetterReason
Row = list[float] | NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed Kafka message, reduced to what scoring and dead-lettering need."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    reason: DeadLetterReason
    message: str

    def headers(self, failed_at: str) -> list[tuple[str, bytes]]:
        r = self.record
        return [
            (HEADER_REASON, self.reason.value.encode()),
            (HEADER_MESSAGE, self.message.encode()),
            (HEADER_TOPIC, r.topic.encode()),
            (HEADER_PARTITION, str(r.partition).encode()),
            (HEADER_OFFSET, str(r.offset).encode()),
            (HEADER_FAILED_AT, failed_at.encode()),
        ]


@dataclass(frozen=True, slots=True)
class Output:
    key: bytes
    value: bytes
    anomaly: bool
    similarity: float
    ts_ms: int


@dataclass
class BatchResult:
    outputs: list[Output] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    detected_at: str = ""


class Rejected(Exception):
    """A record that cannot be scored; carries the dead-letter reason."""

    def __init__(self, reason: DeadLetterReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse(record: Record, shape: ImageShape, max_bytes: int) -> tuple[ImageMessage, Row]:
    """Validate one record's JSON and pixel count; value ranges are checked per batch."""
    raw = record.value
    if raw is None or not raw:
        raise Rejected(Reason.INVALID_JSON, "empty message value")
    if len(raw) > max_bytes:
        raise Rejected(Reason.OVERSIZED, f"{len(raw)} bytes is over the {max_bytes}-byte limit")
    try:
        message = ImageMessage.model_validate_json(raw)
    except ValidationError as exc:
        raise Rejected(*_explain(exc)) from None
    if isinstance(message.pixels, str):
        try:
            return message, parse_art(message.pixels, shape, source="pixels")
        except InputError as exc:
            reason = Reason.PIXEL_VALUE if "character" in exc.problem else Reason.PIXEL_COUNT
            raise Rejected(reason, f"pixels: {exc.problem}") from None
    if len(message.pixels) != shape.size:
        raise Rejected(
            Reason.PIXEL_COUNT,
            f"pixels: {len(message.pixels)} values, expected {shape.size} ({shape})",
        )
    return message, message.pixels


def out_of_range(pixels: NDArray[np.float32]) -> NDArray[np.bool_]:
    """Per row of a batch: does any pixel lie outside [0, 1] or is not finite?"""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(pixels) | (pixels < 0) | (pixels > 1)
    return np.asarray(bad.any(axis=1))


def _value_problem(row: NDArray[np.float32]) -> str:
    bad = ~np.isfinite(row) | (row < 0) | (row > 1)
    index = int(np.argmax(bad))
    return f"pixels[{index}]: {float(row[index])} is outside [0, 1]"


def _explain(exc: ValidationError) -> tuple[DeadLetterReason, str]:
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return Reason.INVALID_JSON, f"invalid JSON: {first['ctx'].get('error', first['msg'])}"
    if first["type"] == "model_type":
        return Reason.SCHEMA, "value must be a JSON object"
    # `pixels` is a union (list | str): report the branch matching what was sent.
    loc = first["loc"]
    if loc and loc[0] == "pixels" and len(errors) > 1:
        first = next((e for e in errors if "list" in str(e["loc"][1:2])), first)
        loc = first["loc"]
    path = ".".join(str(p) for p in loc if not str(p).startswith(("list[", "str")))
    return Reason.SCHEMA, f"{path or 'value'}: {first['msg']}"


class BatchScorer:
    """Decodes, scores (one onnxruntime call) and formats a batch of records."""

    def __init__(
        self,
        model: Model,
        *,
        metric: MetricName | None = None,
        threshold: float | None = None,
        max_message_bytes: int = 65_536,
    ) -> None:
        self.model = model
        self.metric: MetricName = metric or model.metadata.metric
        self.threshold = model.metadata.threshold if threshold is None else threshold
        self.max_message_bytes = max_message_bytes
        self._model_ref = {"version": model.version, "sha256": model.sha256}

    def process(self, records: Sequence[Record]) -> BatchResult:
        now = datetime.now(UTC)
        result = BatchResult(detected_at=now.isoformat(timespec="milliseconds"))
        parsed: list[tuple[Record, ImageMessage]] = []
        rows: list[Row] = []
        shape = self.model.shape
        for record in records:
            try:
                message, row = parse(record, shape, self.max_message_bytes)
            except Rejected as exc:
                result.dead.append(DeadLetter(record, exc.reason, str(exc)))
                continue
            parsed.append((record, message))
            rows.append(row)
        if not rows:
            return result
        # One conversion and one range check for the whole batch, not one per message.
        pixels = np.asarray(rows, dtype=np.float32)
        bad = out_of_range(pixels)
        if bad.any():
            for index in np.flatnonzero(bad):
                problem = _value_problem(pixels[index])
                result.dead.append(DeadLetter(parsed[index][0], Reason.PIXEL_VALUE, problem))
            keep = ~bad
            parsed = [p for p, ok in zip(parsed, keep.tolist(), strict=True) if ok]
            pixels = pixels[keep]
            if not parsed:
                return result
        accepted = parsed
        rows = list(pixels)
        scored = self.model.score(pixels, metric=self.metric, threshold=self.threshold)
        similarity = scored.similarity.tolist()
        anomaly = scored.anomaly.tolist()
        scores = {m: scored.scores[m].tolist() for m in METRICS}
        for i, (record, message) in enumerate(accepted):
            ident = message.id or f"{record.topic}:{record.partition}:{record.offset}"
            ts = message.ts if message.ts is not None else record.timestamp_ms
            body = {
                "id": ident,
                "anomaly": anomaly[i],
                "similarity": similarity[i],
                "metric": self.metric,
                "threshold": self.threshold,
                "scores": {m: scores[m][i] for m in METRICS},
                "model": self._model_ref,
                "pixels": rows[i],
                "reconstruction": scored.reconstruction[i],
                "source": {
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
                "ts": ts,
                "detected_at": result.detected_at,
            }
            value = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
            result.outputs.append(Output(ident.encode(), value, anomaly[i], similarity[i], ts))
        return result
