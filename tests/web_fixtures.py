"""Score messages for the anomaly page's tests, built with the worker's own output schema."""

from typing import Any

import orjson

from service.schemas import FullScoreMessage, ModelRef, Source
from service.web.feed import PageModel

MODEL = PageModel(
    version="20261126T171150Z",
    sha256="e3" * 32,
    metric="hamming",
    mode="binary",
    width=2,
    height=2,
    threshold=0.6,
)


def score_message(ident: str = "img-1", offset: int = 7, **fields: Any) -> dict[str, Any]:
    """A flagged image's score message (2x2 pixels), as a JSON-ready dict."""
    message = FullScoreMessage(
        id=ident,
        anomaly=True,
        similarity=0.25,
        metric="hamming",
        threshold=0.6,
        scores={"hamming": 0.25, "ruzicka": 0.2, "dice": 0.3, "cosine": 0.3},
        model=ModelRef(version=MODEL.version, sha256=MODEL.sha256),
        pixels=[1.0, 0.0, 1.0, 0.0],
        reconstruction=[0.0, 0.0, 1.0, 1.0],
        source=Source(topic="pixelwatch.images", partition=1, offset=offset),
        ts=1764169200000 + offset,
        detected_at="2026-11-26T17:13:20.512+00:00",
    )
    return {**message.model_dump(mode="json", exclude_none=True), **fields}


def payload(ident: str = "img-1", offset: int = 7, **fields: Any) -> bytes:
    return orjson.dumps(score_message(ident, offset, **fields))
