"""W3C trace context carried from an input to its outputs, and the rule for its other headers.

A producer that traces its requests puts a `traceparent` header (and maybe `tracestate`) on
the image it sends. Every output made from that input (its scores record, its anomaly, its
shadow verdict, its dead letter) carries the same trace on: the input's trace id and flags
with a new span id of its own, so a consumer of the outputs continues the producer's trace.

    input:   traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
    output:  traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-<new 16 hex digits>-01

A `traceparent` that breaks the W3C rules (https://www.w3.org/TR/trace-context/) is not
carried, and neither is its `tracestate`; the message itself is scored as usual.

Other input headers are dropped, unless `PIXELWATCH_PASS_HEADERS` names them (exact names, or
prefixes ending in `*`). A passed value is escaped and cut like every other string from
Kafka, at most `MAX_PASSED` headers pass per message, and a `pixelwatch.*` header never
passes: our own headers say what we did, and no input can say it for us.
"""

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, NamedTuple

from confluent_kafka import Message

from service.untrusted import clean, clean_bytes

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
OWN_PREFIX: Final = "pixelwatch."
"""Headers under this prefix are ours: an input's never reach an output."""

MAX_PASSED: Final = 16
"""Passed headers per message, at most; the others are dropped."""
PASSED_VALUE_LIMIT: Final = 512
"""Characters of a passed header's value (escaped), at most."""
PASSED_NAME_LIMIT: Final = 100
TRACESTATE_LIMIT: Final = 512
"""The W3C limit a tracestate must keep to: 512 characters, 32 list members."""
TRACESTATE_MEMBERS: Final = 32

# version-traceid-parentid-flags (2-32-16-2), lower-case hex; a later version may append "-"
# and more.
_DASH: Final = ord("-")
_HEX_OR_DASH: Final = b"0123456789abcdef-"
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16
# A tracestate list member: key=value, the key simple (`vendor`) or multi-tenant (`t@vendor`).
_MEMBER: Final = re.compile(
    r"(?:[a-z0-9][a-z0-9_*/-]{0,240}@[a-z][a-z0-9_*/-]{0,13}|[a-z][a-z0-9_*/-]{0,255})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)

Header = tuple[str, str | bytes | None]


class TraceParent(NamedTuple):
    """A valid `traceparent`: the trace it belongs to, its parent span and its flags. (A
    named tuple, not a dataclass: one is made per traced input, on the hot path.)"""

    trace_id: str  # 32 lower-case hex digits, not all zero
    span_id: str  # 16 lower-case hex digits, not all zero: the producer's span
    flags: str  # 2 hex digits (01: sampled)

    def child(self) -> bytes:
        """The `traceparent` of an output: same trace and flags, a new span id."""
        return f"00-{self.trace_id}-{new_span_id()}-{self.flags}".encode()

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)


def new_span_id() -> str:
    """16 random hex digits, never all zero (an all-zero span id is invalid)."""
    while True:
        span = random.getrandbits(64)
        if span:
            return f"{span:016x}"


def parse_traceparent(raw: str | bytes | None) -> TraceParent | None:
    """The trace context in a `traceparent` value, or None if it breaks the W3C rules:
    version 00 is exactly 55 characters; version ff is invalid; a later version is read by
    its first four fields (and must have a `-` after them if it is longer); every field is
    lower-case hex; an all-zero trace id or span id is invalid."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode()  # anything not ASCII fails the checks below
    # Byte checks, not a regular expression: this runs once per traced input.
    head = raw[:55]
    if (
        len(head) != 55
        or head[2] != _DASH
        or head[35] != _DASH
        or head[52] != _DASH
        or head.count(b"-") != 3
        or head.translate(None, _HEX_OR_DASH)  # something else is left
    ):
        return None
    version = head[:2]
    if version == b"00":
        if len(raw) != 55:
            return None
    elif version == b"ff" or (len(raw) > 55 and raw[55] != _DASH):
        return None
    trace_id, span_id = head[3:35], head[36:52]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id.decode(), span_id.decode(), head[53:55].decode())


def parse_tracestate(values: Sequence[str | bytes | None]) -> bytes | None:
    """The `tracestate` to carry, or None when it is absent or not valid (W3C: at most 32
    list members and 512 characters, each member `key=value`; several headers form one
    list, in order)."""
    parts: list[str] = []
    for value in values:
        if value is None:
            continue
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                return None
        parts.append(value)
    text = ",".join(parts)
    if not text or len(text) > TRACESTATE_LIMIT:
        return None
    members = [m.strip(" \t") for m in text.split(",")]
    members = [m for m in members if m]  # empty members are allowed, and dropped
    if not members or len(members) > TRACESTATE_MEMBERS:
        return None
    if not all(_MEMBER.fullmatch(m) for m in members):
        return None
    keys = [m.split("=", 1)[0] for m in members]
    if len(set(keys)) != len(keys):
        return None
    return ",".join(members).encode()


class PassRule:
    """Which input headers (other than the trace context) an output carries."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        entries = list(entries)
        self.names = frozenset(e for e in entries if not e.endswith("*"))
        self.prefixes = tuple(e[:-1] for e in entries if e.endswith("*"))

    def __bool__(self) -> bool:
        return bool(self.names or self.prefixes)

    def passes(self, name: str) -> bool:
        if name.startswith(OWN_PREFIX):
            return False
        return name in self.names or name.startswith(self.prefixes)


NO_PASSING: Final = PassRule()
"""A rule that passes no header: what remains is the trace context."""


class Carried(NamedTuple):
    """What one input hands on to each of its outputs."""

    parent: TraceParent | None
    state: bytes | None  # only with a parent
    passed: tuple[Header, ...]

    def headers(self) -> list[Header]:
        """The headers to add to one output: a new span id each call."""
        extra = list(self.passed)
        if self.parent is not None:
            extra.append((TRACEPARENT, self.parent.child()))
            if self.state is not None:
                extra.append((TRACESTATE, self.state))
        return extra


Headers = Sequence[Header] | Mapping[str, str | bytes | None]


def carried(headers: Headers, rule: PassRule) -> Carried | None:
    """What a message with these headers hands on; None when nothing."""
    parents: list[str | bytes | None] = []
    states: list[str | bytes | None] = []
    passed: list[Header] = []
    passing = bool(rule)
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        # Only names of these two lengths can be the trace context: most skip lower().
        if len(name) in (10, 11):
            lower = name.lower()
            if lower == TRACEPARENT:
                parents.append(value)
                continue
            if lower == TRACESTATE:
                states.append(value)
                continue
        if passing and len(passed) < MAX_PASSED and rule.passes(name):
            text = None if value is None else _text(value)
            passed.append((clean(name, PASSED_NAME_LIMIT), text))
    # Two traceparent headers contradict each other: neither is carried.
    parent = parse_traceparent(parents[0]) if len(parents) == 1 else None
    state = parse_tracestate(states) if parent is not None and states else None
    if parent is None and not passed:
        return None
    return Carried(parent, state, tuple(passed))


def _text(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return clean_bytes(value, PASSED_VALUE_LIMIT).encode()
    return clean(value, PASSED_VALUE_LIMIT).encode()


def carry(messages: Sequence[Message], rule: PassRule) -> list[Carried | None] | None:
    """What each message of a batch hands on, by position; None when no message does (the
    usual case, which costs one `headers()` call per message)."""
    found: list[Carried | None] | None = None
    for position, message in enumerate(messages):
        headers = message.headers()
        if not headers:
            continue
        hand_on = carried(headers, rule)
        if hand_on is None:
            continue
        if found is None:
            found = [None] * len(messages)
        found[position] = hand_on
    return found


def continued(headers: Iterable[Header]) -> list[Header]:
    """An input's headers as its dead letter keeps them (for replay): the trace context
    continues with a new span id, and an invalid one is left out."""
    pairs = list(headers)
    if not any(k.lower() == TRACEPARENT for k, _ in pairs):
        return pairs  # no trace context to continue (a lone tracestate stays as it came)
    hand_on = carried(pairs, NO_PASSING)  # the trace context alone, read as for any output
    trace = (TRACEPARENT, TRACESTATE)
    kept: list[Header] = [(k, v) for k, v in pairs if k.lower() not in trace]
    return kept + (hand_on.headers() if hand_on is not None else [])
