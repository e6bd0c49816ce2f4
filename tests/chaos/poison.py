"""Messages that once stopped or fooled a worker, and seeded fuzz: inputs for the fault suite.

Each is (key, value, headers). The poison set is the one the fault report found:

- `ts` 1e30: schema-valid once (no maximum), then too large for every JSON encoder;
- an input just under 1 MiB: the broker takes it, but not its dead letter (value plus headers);
- a field name with a newline, which once forged a line of the worker's log;
- a 60,000-character field name, which once made 60 KB log lines and headers.
"""

from typing import Final

import numpy as np
import orjson

Outgoing = tuple[bytes, bytes, list[tuple[str, bytes]]]

MIB: Final = 1024 * 1024
BROKER_LIMIT: Final = 1_048_588  # Kafka's default message.max.bytes (a record batch)
FORGED_LINE: Final = "FAKE LOG LINE: all is well"
LONG_NAME: Final = 60_000


def pixels(rng: np.random.Generator) -> list[float]:
    return [float(v) for v in rng.random(64) < 0.3]


def poison_set(prefix: str = "poison", seed: int = 0) -> dict[str, Outgoing]:
    """The four poison messages by what they test; each key is `PREFIX-what`."""
    rng = np.random.default_rng(seed)

    def message(what: str, doc: dict[str, object] | bytes) -> tuple[str, Outgoing]:
        key = f"{prefix}-{what}"
        value = doc if isinstance(doc, bytes) else orjson.dumps({"id": key, **doc})
        return what, (key.encode(), value, [])

    # 1e30 is a JSON number that orjson.dumps cannot write back: no dict can carry it here.
    ts_1e30 = b'{"id": "%s-ts-1e30", "pixels": %s, "ts": 1e30}' % (
        prefix.encode(),
        orjson.dumps(pixels(rng)),
    )
    # Under 1 MiB and under the broker's limit with the record's own overhead, but not with
    # the few hundred bytes of headers its dead letter carries.
    big_key = f"{prefix}-near-1mib"
    head = b'{"id": "' + big_key.encode() + b'", "pixels": "'
    filler = MIB - 250 - len(head) - 2
    near_mib = head + b"." * filler + b'"}'
    assert len(near_mib) < MIB and len(near_mib) + 200 < BROKER_LIMIT
    return dict(
        [
            ("ts-1e30", (f"{prefix}-ts-1e30".encode(), ts_1e30, [])),
            ("near-1mib", (big_key.encode(), near_mib, [])),
            message("newline-field", {"pixels": pixels(rng), f"x\n{FORGED_LINE}": 1}),
            message("long-field", {"pixels": pixels(rng), "y" * LONG_NAME: 1}),
        ]
    )


def fuzz(count: int, prefix: str = "fuzz", seed: int = 7) -> list[Outgoing]:
    """`count` seeded messages: random bytes, broken and mutated JSON, wrong types, binary
    pixels with and without the right size, and valid images among them."""
    rng = np.random.default_rng(seed)
    out: list[Outgoing] = []
    for i in range(count):
        key = f"{prefix}-{i}".encode()
        kind = int(rng.integers(0, 8))
        headers: list[tuple[str, bytes]] = []
        good = orjson.dumps({"id": key.decode(), "pixels": pixels(rng)})
        if kind == 0:  # random bytes of any length, including none
            value = rng.bytes(int(rng.integers(0, 300)))
        elif kind == 1:  # a valid image with a few random bytes flipped
            raw = bytearray(good)
            for at in rng.integers(0, len(raw), size=int(rng.integers(1, 6))):
                raw[int(at)] = int(rng.integers(0, 256))
            value = bytes(raw)
        elif kind == 2:  # a valid image cut short
            value = good[: int(rng.integers(0, len(good)))]
        elif kind == 3:  # JSON of the wrong shape or types
            value = orjson.dumps(
                [
                    {"pixels": "X" * int(rng.integers(0, 100))},
                    {"pixels": pixels(rng)[: int(rng.integers(0, 64))]},
                    {"pixels": [float(v) for v in rng.normal(0.5, 2.0, 64)]},
                    {"id": int(rng.integers(0, 9)), "pixels": pixels(rng)},
                    {"images": []},
                    None,
                    "pixels",
                    {"pixels": pixels(rng), "ts": -int(rng.integers(1, 10**6))},
                ][int(rng.integers(0, 8))]
            )
        elif kind == 4:  # binary pixels, right or wrong size, with a format header
            fmt = [b"u8", b"bits", b"png"][int(rng.integers(0, 3))]
            headers = [("pixelwatch.format", fmt)]
            value = rng.bytes(int(rng.choice([64, 8, 63, 128, 0, 9])))
        elif kind == 5:  # non-UTF-8 and control characters inside strings
            value = b'{"id": "' + rng.bytes(20) + b'", "pixels": "\x00\x1b[2J"}'
        else:  # valid: these must be scored
            value = good
        out.append((key, value, headers))
    return out
