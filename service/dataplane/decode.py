"""Consumed messages in, one float32 pixel array out: the decoding half of the hot path.

Three kinds of message carry images (deploy/schemas/ and docs/messages.md describe them):

- a JSON image, `{"id": ..., "pixels": [...], "ts": ...}`;
- a JSON batch, `{"images": [image, image, ...]}`;
- binary pixels, announced by the header `pixelwatch.format`: `u8` (one byte per pixel,
  0..255 scaled to [0, 1]) or `bits` (one bit per pixel, most significant bit first, each
  image padded to whole bytes); a message may hold several images back to back.

The fast path covers well-formed JSON images: `orjson.loads`, a few type checks, and one
numpy conversion and range check for the whole batch. Anything it does not accept takes the
slow path, pydantic, which is the schema and the one source of every dead-letter reason and
text; so the fast path changes speed, never verdicts. A message that is rejected as a whole is
dead-lettered with its original bytes; one bad image of a batch is dead-lettered alone, as the
JSON of that image, so it can be fixed and replayed as a single image.
"""

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson
from confluent_kafka import Message
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import InputError
from service.schemas import (
    HEADER_FORMAT,
    HEADER_ID,
    INT64_MAX,
    MAX_ID_LENGTH,
    DeadLetterReason,
    ImageMessage,
)
from service.scoring.images import ImageShape, parse_art
from service.untrusted import clean

Reason = DeadLetterReason
Headers = list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None]
WHOLE: Final = -1
"""Image index of a message that carries one image (or of a reject of the whole message)."""

_IMAGE_KEYS: Final = frozenset({"id", "pixels", "ts"})
BINARY_FORMATS: Final = ("u8", "bits")


@dataclass(frozen=True, slots=True)
class Reject:
    """Something that cannot be scored: a whole message, or one image of a batch."""

    message: int  # index of the message in the batch
    index: int  # image index within the message, or WHOLE
    reason: DeadLetterReason
    text: str
    value: bytes | None = None  # what to dead-letter instead of the message's own value


@dataclass(slots=True)
class Decoded:
    """The images of a batch, row i of `pixels` described by entry i of the lists."""

    pixels: NDArray[np.float32]
    message: list[int] = field(default_factory=list)  # index of its message in the batch
    index: list[int] = field(default_factory=list)  # position in its message, or WHOLE
    ids: list[str | None] = field(default_factory=list)  # None: derive from Kafka coordinates
    ts: list[int | None] = field(default_factory=list)  # None: the Kafka timestamp
    # An image of a batch: what its dead letter would carry (its JSON, or the object to
    # serialise); None for a message's only image, whose dead letter is the message itself.
    values: list[bytes | dict[str, Any] | None] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.message)

    def dead_value(self, row: int) -> bytes | None:
        value = self.values[row]
        return orjson.dumps(value) if isinstance(value, dict) else value


class _Batch(BaseModel):
    """The envelope of a JSON batch; its images are validated one by one."""

    model_config = ConfigDict(extra="forbid")

    images: list[Any] = Field(min_length=1)


class Rejected(Exception):
    """Raised by the slow path; carries the dead-letter reason."""

    def __init__(self, reason: DeadLetterReason, text: str) -> None:
        super().__init__(text)
        self.reason = reason


class Decoder:
    """Decodes batches of messages for one image shape and size limit."""

    def __init__(self, shape: ImageShape, max_message_bytes: int) -> None:
        self.shape = shape
        self.size = shape.size
        self.max_message_bytes = max_message_bytes

    def decode(self, messages: list[Message]) -> Decoded:
        fast = _Fast()
        size = self.size
        slow = Decoded(pixels=np.empty((0, self.size), dtype=np.float32))
        rows: list[NDArray[np.float32]] = []  # the slow and binary paths' rows, in blocks
        values = [message.value() for message in messages]
        # numpy would read JSON booleans as 0 and 1, pydantic refuses them: any message that
        # may hold one leaves the fast path, and pydantic says what is wrong. One scan of the
        # whole batch usually clears every message at once (half the cost of one per message).
        joined = b"\n".join([raw for raw in values if raw])
        all_plain = b"true" not in joined and b"false" not in joined
        # The fast path's columns, appended to without an attribute lookup each.
        add_row, add_message, add_index = fast.rows.append, fast.message.append, fast.index.append
        add_id, add_ts, add_value = fast.ids.append, fast.ts.append, fast.values.append
        for i, message in enumerate(messages):
            raw = values[i]
            if not raw:
                slow.rejects.append(Reject(i, WHOLE, Reason.INVALID_JSON, "empty message value"))
                continue
            if len(raw) > self.max_message_bytes:
                text = f"{len(raw)} bytes is over the {self.max_message_bytes}-byte limit"
                slow.rejects.append(Reject(i, WHOLE, Reason.OVERSIZED, text))
                continue
            headers = message.headers()
            if headers:
                fmt = _header(headers, HEADER_FORMAT)
                if fmt is not None:
                    self._binary(i, raw, fmt, _header(headers, HEADER_ID), slow, rows)
                    continue
            plain = all_plain or (b"true" not in raw and b"false" not in raw)
            doc = _loads(raw)
            if type(doc) is dict:
                if "images" in doc:
                    self._json_batch(i, doc, plain, fast, slow, rows)
                    continue
                # The common case, inlined: `_Fast.take` for a message's only image.
                pixels = doc.get("pixels")
                ident = doc.get("id")
                ts = doc.get("ts")
                if (
                    plain
                    and type(pixels) is list
                    and len(pixels) == size
                    # no key besides pixels, id and ts (a count is cheaper than a set view)
                    and len(doc) == 1 + ("id" in doc) + ("ts" in doc)
                    and (ident is None or (type(ident) is str and 0 < len(ident) <= MAX_ID_LENGTH))
                    and (ts is None or (type(ts) is int and 0 <= ts <= INT64_MAX))
                ):
                    add_row(pixels)
                    add_message(i)
                    add_index(WHOLE)
                    add_id(ident)
                    add_ts(ts)
                    add_value(None)
                    continue
            self._slow(i, raw, WHOLE, slow, rows)
        return self._assemble(fast, slow, rows, messages)

    def _assemble(
        self,
        fast: "_Fast",
        slow: Decoded,
        rows: list[NDArray[np.float32]],
        messages: list[Message],
    ) -> Decoded:
        """Fast rows first, in one numpy conversion; then the others, in message order."""
        array = fast.array(self.size)
        if array is None:
            # Rare: a row holds a string, a list or an int beyond 64 bits. Take the rows
            # numpy reads as numbers; send the others through pydantic for their reason.
            good = _Fast()
            for k, row in enumerate(fast.rows):
                one = _numbers(row, self.size)
                i, index = fast.message[k], fast.index[k]
                value = fast.values[k]
                if one is not None:
                    good.add(row, i, index, fast.ids[k], fast.ts[k], value)
                    continue
                raw = orjson.dumps(value) if value is not None else messages[i].value()
                assert raw is not None
                self._slow(i, raw, index, slow, rows, value=raw if value is not None else None)
            fast = good
            array = fast.array(self.size)
            assert array is not None
        out = Decoded(
            pixels=np.concatenate([array, *rows]) if rows else array,
            message=fast.message + slow.message,
            index=fast.index + slow.index,
            ids=fast.ids + slow.ids,
            ts=fast.ts + slow.ts,
            values=fast.values + slow.values,
            rejects=slow.rejects,
        )
        return out

    def _json_batch(
        self,
        i: int,
        doc: dict[str, Any],
        plain: bool,
        fast: "_Fast",
        slow: Decoded,
        rows: list[NDArray[np.float32]],
    ) -> None:
        try:
            batch = _Batch.model_validate(doc)
        except ValidationError as exc:
            reason, text = explain(exc)
            slow.rejects.append(Reject(i, WHOLE, reason, text))
            return
        for k, image in enumerate(batch.images):
            if plain and type(image) is dict and fast.take(image, i, k, self.size):
                continue
            raw = orjson.dumps(image)
            self._slow(i, raw, k, slow, rows, value=raw)

    def _binary(
        self,
        i: int,
        raw: bytes,
        fmt: bytes,
        ident: bytes | None,
        out: Decoded,
        rows: list[NDArray[np.float32]],
    ) -> None:
        name = fmt.decode("ascii", errors="replace")
        if name not in BINARY_FORMATS:
            text = f"{HEADER_FORMAT} {clean(name, 40)!r} is not a format (use u8 or bits)"
            out.rejects.append(Reject(i, WHOLE, Reason.SCHEMA, text))
            return
        per_image = self.size if name == "u8" else (self.size + 7) // 8
        if len(raw) % per_image:
            text = (
                f"{len(raw)} bytes is not a whole number of {name} images "
                f"of {per_image} bytes ({self.shape})"
            )
            out.rejects.append(Reject(i, WHOLE, Reason.PIXEL_COUNT, text))
            return
        base: str | None = None
        if ident is not None:
            base = ident.decode("utf-8", errors="replace")
            if not 1 <= len(base) <= MAX_ID_LENGTH:
                text = f"{HEADER_ID}: must be 1 to {MAX_ID_LENGTH} characters"
                out.rejects.append(Reject(i, WHOLE, Reason.SCHEMA, text))
                return
        data = np.frombuffer(raw, dtype=np.uint8).reshape(-1, per_image)
        if name == "u8":
            images = data.astype(np.float32) / np.float32(255.0)
        else:
            images = np.unpackbits(data, axis=1, count=self.size).astype(np.float32)
        rows.append(images)  # one block per message: the bookkeeping below is per list, too
        count = len(images)
        if count == 1:
            out.message.append(i)
            out.index.append(WHOLE)
            out.ids.append(base)
            out.ts.append(None)
            out.values.append(None)
            return
        out.message.extend([i] * count)
        out.index.extend(range(count))
        out.ids.extend([None] * count if base is None else [f"{base}:{k}" for k in range(count)])
        out.ts.extend([None] * count)
        out.values.extend([raw[k : k + per_image] for k in range(0, len(raw), per_image)])

    def _slow(
        self,
        i: int,
        raw: bytes,
        index: int,
        out: Decoded,
        rows: list[NDArray[np.float32]],
        value: bytes | None = None,
    ) -> None:
        try:
            message, row = parse_image(raw, self.shape)
        except Rejected as exc:
            out.rejects.append(Reject(i, index, exc.reason, str(exc), value))
            return
        rows.append(row.reshape(1, -1))
        out.message.append(i)
        out.index.append(index)
        out.ids.append(message.id)
        out.ts.append(message.ts)
        out.values.append(value)


class _Fast:
    """Images that passed the fast checks, their pixels still Python lists."""

    __slots__ = ("ids", "index", "message", "rows", "ts", "values")

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.message: list[int] = []
        self.index: list[int] = []
        self.ids: list[str | None] = []
        self.ts: list[int | None] = []
        self.values: list[bytes | dict[str, Any] | None] = []  # as in Decoded

    def take(self, doc: dict[str, Any], message: int, index: int, size: int) -> bool:
        """Add `doc` if pydantic would accept it unchanged (pixel values aside)."""
        pixels = doc.get("pixels")
        if type(pixels) is not list or len(pixels) != size or not doc.keys() <= _IMAGE_KEYS:
            return False
        ident = doc.get("id")
        if ident is not None and (type(ident) is not str or not 0 < len(ident) <= MAX_ID_LENGTH):
            return False
        ts = doc.get("ts")
        if ts is not None and (type(ts) is not int or not 0 <= ts <= INT64_MAX):
            return False
        self.add(pixels, message, index, ident, ts, None if index == WHOLE else doc)
        return True

    def add(
        self,
        row: list[Any],
        message: int,
        index: int,
        ident: str | None,
        ts: int | None,
        value: bytes | dict[str, Any] | None,
    ) -> None:
        self.rows.append(row)
        self.message.append(message)
        self.index.append(index)
        self.ids.append(ident)
        self.ts.append(ts)
        self.values.append(value)

    def array(self, size: int) -> NDArray[np.float32] | None:
        """All rows as one float32 array, or None if some row is not all numbers."""
        if not self.rows:
            return np.empty((0, size), dtype=np.float32)
        array = _numbers(self.rows, size, len(self.rows))
        return None if array is None else array


def _numbers(rows: Any, size: int, count: int | None = None) -> NDArray[np.float32] | None:
    try:
        array = np.array(rows)
    except (ValueError, TypeError, OverflowError):
        return None
    shape = (size,) if count is None else (count, size)
    if array.dtype.kind not in "iuf" or array.shape != shape:
        return None
    with np.errstate(over="ignore"):  # beyond float32: inf, which the range check refuses
        return array.astype(np.float32)


def _header(headers: Headers, name: str) -> bytes | None:
    """The last value of header `name` (consumed headers are a list of pairs)."""
    found: bytes | None = None
    pairs = headers.items() if isinstance(headers, dict) else headers
    for key, value in pairs:
        if key == name:
            found = value.encode() if isinstance(value, str) else (value or b"")
    return found


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def parse_image(raw: bytes, shape: ImageShape) -> tuple[ImageMessage, NDArray[np.float32]]:
    """The slow path: validate one image with pydantic; pixel ranges are checked per batch."""
    try:
        message = ImageMessage.model_validate_json(raw)
    except ValidationError as exc:
        raise Rejected(*explain(exc)) from None
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
    # A value beyond float32 (1e300) becomes inf here and is refused by the range check.
    with np.errstate(over="ignore"):
        return message, np.asarray(message.pixels, dtype=np.float32)


def explain(exc: ValidationError) -> tuple[DeadLetterReason, str]:
    """A pydantic error as a dead-letter reason and one line (field names are untrusted)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        detail = str(first.get("ctx", {}).get("error", first["msg"]))
        return Reason.INVALID_JSON, f"invalid JSON: {clean(detail)}"
    if first["type"] in ("model_type", "model_attributes_type"):
        return Reason.SCHEMA, "value must be a JSON object"
    # `pixels` is a union (list | str): report the branch matching what was sent.
    loc = first["loc"]
    if loc and loc[0] == "pixels" and len(errors) > 1:
        first = next((e for e in errors if "list" in str(e["loc"][1:2])), first)
        loc = first["loc"]
    path = ".".join(str(p) for p in loc if not str(p).startswith(("list[", "str")))
    return Reason.SCHEMA, f"{clean(path or 'value', 80)}: {first['msg']}"


def out_of_range(pixels: NDArray[np.float32]) -> NDArray[np.bool_]:
    """Per row of a batch: does any pixel lie outside [0, 1] or is not finite?"""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(pixels) | (pixels < 0) | (pixels > 1)
    return np.asarray(bad.any(axis=1))


def value_problem(row: NDArray[np.float32]) -> str:
    bad = ~np.isfinite(row) | (row < 0) | (row > 1)
    index = int(np.argmax(bad))
    return f"pixels[{index}]: {float(row[index])} is outside [0, 1]"
