"""Message schemas at the Kafka edges: what producers send and what the worker publishes.

The JSON Schemas under deploy/schemas/ are generated from these models
(`python -m service.schemas deploy/schemas`) and a test keeps them in sync.
"""

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.scoring.similarity import MetricName

Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


INT64_MAX: Final = 2**63 - 1
MAX_ID_LENGTH: Final = 256


class ImageMessage(BaseModel):
    """An image to score (the value of a message on the input topic; the key is optional)."""

    model_config = ConfigDict(extra="forbid", title="pixelwatch image")

    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)] | None = Field(
        None, description="your identifier; defaults to 'topic:partition:offset'"
    )
    pixels: list[Annotated[float, Field(strict=True, allow_inf_nan=True)]] | str = Field(
        description="width*height numbers in [0,1], row by row, or X/. art (X = 1, . = 0; "
        "spaces ignored)"
    )
    # Bounded to what a Kafka timestamp (int64) and every JSON encoder can carry.
    ts: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = Field(
        None, description="event time in epoch milliseconds; defaults to the Kafka timestamp"
    )


class ImageBatchMessage(BaseModel):
    """Several images in one message: each is scored, answered and dead-lettered on its own."""

    model_config = ConfigDict(extra="forbid", title="pixelwatch image batch")

    images: list[ImageMessage] = Field(
        min_length=1,
        description="image objects as in image.schema.json; an image without an id gets "
        "'topic:partition:offset:index'",
    )


class Source(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int
    index: int | None = Field(
        None, description="position of the image in a message that carries several"
    )


class ModelRef(BaseModel):
    version: str
    sha256: str


class ScoreMessage(BaseModel):
    """A scored image, compact: the scores topic's default record."""

    model_config = ConfigDict(extra="forbid", title="pixelwatch score")

    id: str
    anomaly: bool
    similarity: Unit
    scores: dict[MetricName, Unit]
    model: ModelRef
    source: Source
    ts: int = Field(description="event time, epoch milliseconds (input ts or Kafka timestamp)")


class FullScoreMessage(BaseModel):
    """A scored image with its pixels and reconstruction: the anomalies topic's default record."""

    model_config = ConfigDict(extra="forbid", title="pixelwatch full score")

    id: str
    anomaly: bool
    similarity: Unit
    metric: MetricName
    threshold: Unit
    scores: dict[MetricName, Unit]
    model: ModelRef
    pixels: list[Unit]
    reconstruction: list[Unit]
    source: Source
    ts: int = Field(description="event time, epoch milliseconds (input ts or Kafka timestamp)")
    detected_at: str = Field(description="when the worker scored it, ISO 8601 UTC")


OutputFormat = Literal["compact", "full"]
OUTPUT_SCHEMAS: Final[dict[OutputFormat, type[BaseModel]]] = {
    "compact": ScoreMessage,
    "full": FullScoreMessage,
}


class DeadLetterReason(StrEnum):
    """Why a message went to the dead-letter topic (a closed set: it is a metric label)."""

    OVERSIZED = "oversized"
    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    PIXEL_COUNT = "pixel_count"
    PIXEL_VALUE = "pixel_value"
    DELIVERY = "delivery"
    INTERNAL = "internal"


# A dead letter keeps the original key and value bytes untouched, so it can be replayed;
# why and where it came from travel in these headers (as Kafka Connect does).
HEADER_REASON: Final = "pixelwatch.error.reason"
HEADER_MESSAGE: Final = "pixelwatch.error.message"
HEADER_TOPIC: Final = "pixelwatch.source.topic"
HEADER_PARTITION: Final = "pixelwatch.source.partition"
HEADER_OFFSET: Final = "pixelwatch.source.offset"
HEADER_INDEX: Final = "pixelwatch.source.index"
HEADER_FAILED_AT: Final = "pixelwatch.failed_at"
# The prefixes of the headers a dead letter sets itself. Copies of them on an input are
# dropped when it is dead-lettered or replayed, so a message that fails again does not
# carry two reasons.
DEAD_LETTER_HEADERS: Final = ("pixelwatch.error.", "pixelwatch.source.", HEADER_FAILED_AT)

# Binary input: the format header announces it; the optional id header names the image(s).
HEADER_FORMAT: Final = "pixelwatch.format"
HEADER_ID: Final = "pixelwatch.id"
# Every output names the model that scored it.
HEADER_MODEL_VERSION: Final = "pixelwatch.model.version"
HEADER_MODEL_SHA256: Final = "pixelwatch.model.sha256"

HEADERS: Final[dict[str, str]] = {
    HEADER_FORMAT: "on an input: `u8` or `bits` announces binary pixels instead of JSON",
    HEADER_ID: "on a binary input: the image's id; several images get `ID:0`, `ID:1`, …",
    HEADER_MODEL_VERSION: "on every output: the version of the model that scored it",
    HEADER_MODEL_SHA256: "on every output: the sha256 of that model's file",
    HEADER_REASON: "on a dead letter: why it could not be scored (a dead-letter reason)",
    HEADER_MESSAGE: "on a dead letter: one line saying what is wrong, escaped and cut",
    HEADER_TOPIC: "on a dead letter: the topic it was consumed from",
    HEADER_PARTITION: "on a dead letter: its partition",
    HEADER_OFFSET: "on a dead letter: its offset",
    HEADER_INDEX: "on a dead letter of one image of a batch: the image's position",
    HEADER_FAILED_AT: "on a dead letter: when it failed, ISO 8601 UTC",
    "traceparent": "W3C trace context: on an input, carried to each of its outputs (scores, "
    "anomaly, shadow, dead letter) with the same trace id and flags and a new span id",
    "tracestate": "W3C vendor trace state: carried with a valid traceparent",
}
"""Every header pixelwatch reads or writes, with its meaning (the messages reference)."""


class ImageVerdict(BaseModel):
    """One image of a multi-image message, as a message's scores record lists it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    index: int = Field(description="position of the image in its message")
    anomaly: bool
    similarity: Unit
    scores: dict[MetricName, Unit]
    ts: int = Field(description="event time, epoch milliseconds (input ts or Kafka timestamp)")


class DeadImage(BaseModel):
    """An image of a multi-image message that went to the dead-letter topic instead."""

    model_config = ConfigDict(extra="forbid")

    index: int
    reason: DeadLetterReason


class MessageScores(BaseModel):
    """Every image of one multi-image message, in input order: the scores topic's record with
    PIXELWATCH_SCORES_GROUPING=message (single-image messages keep ScoreMessage)."""

    model_config = ConfigDict(extra="forbid", title="pixelwatch message scores")

    source: Source = Field(description="the input message (no index: it is the whole message)")
    model: ModelRef
    images: list[ImageVerdict] = Field(description="the scored images, in input order")
    dead: list[DeadImage] = Field(description="the images dead-lettered instead, by index")


SCHEMAS: Final[dict[str, type[BaseModel]]] = {
    "image.schema.json": ImageMessage,
    "image-batch.schema.json": ImageBatchMessage,
    "score.schema.json": ScoreMessage,
    "score-full.schema.json": FullScoreMessage,
    "message-scores.schema.json": MessageScores,
}


def render_schemas() -> dict[str, str]:
    return {
        name: json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        for name, model in SCHEMAS.items()
    }


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "deploy/schemas")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in render_schemas().items():
        (target / name).write_text(text, encoding="utf-8")
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
