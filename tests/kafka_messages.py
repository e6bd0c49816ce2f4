"""Consumed-message values for tests of the data path's own logic: real confluent-kafka
`Message` objects, built in memory the way librdkafka hands them to the consumer."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

BASE_TS = 1_700_000_000_000


def kafka_message(
    value: bytes | None,
    offset: int = 0,
    *,
    partition: int = 3,
    topic: str = "images",
    key: bytes | None = None,
    headers: Sequence[tuple[str, str | bytes | None]] | None = None,
    timestamp_ms: int | None = None,
) -> Message:
    ts = BASE_TS + offset if timestamp_ms is None else timestamp_ms
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=list(headers) if headers is not None else None,
        timestamp=(TIMESTAMP_CREATE_TIME, ts),
    )


def image_json(pixels: Any, **extra: object) -> bytes:
    return orjson.dumps({"pixels": pixels, **extra}, option=orjson.OPT_SERIALIZE_NUMPY)


def u8_bytes(images: np.ndarray) -> bytes:
    return bytes(np.round(np.asarray(images) * 255).astype(np.uint8).reshape(-1).tolist())


def bits_bytes(images: np.ndarray) -> bytes:
    rows = np.asarray(images).reshape(len(images), -1) >= 0.5
    return np.packbits(rows, axis=1).tobytes()
