"""The anomaly page's data: the last N anomalies, and the counts behind the header's rates.

The data path hands over each batch with `add_batch` from whatever thread it runs in: that
costs a lock and a few appends, never parsing. The payloads are parsed and checked on the
event loop, and only while someone watches the page: a subscriber's arrival drains them, and
so do batches while subscribers are connected, at most every `REFRESH_INTERVAL` seconds.
Payloads are untrusted (their `id` and much else come from Kafka): each is validated against
`PageAnomaly`, its strings capped, and one that does not fit is counted and left out, never
passed on as is.
"""

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from service.dataplane.pipeline import BatchResult, BatchScorer
from service.observability.throttle import Throttle

log = logging.getLogger(__name__)

ELLIPSIS: Final = "…"
INT64_MAX: Final = 2**63 - 1
REJECT_LOG_INTERVAL: Final = 60.0
"""Seconds between two log lines about payloads the page could not show."""
REFRESH_INTERVAL: Final = 0.25
"""Shortest time between two refreshes for the watchers: a busy data path sends a batch every
few milliseconds, and parsing each one's anomalies would cost the event loop for nothing."""


def _capped(limit: int) -> Callable[[str], str]:
    def cap(text: str) -> str:
        return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS

    return cap


def _cap(limit: int) -> AfterValidator:
    """Cut a string to `limit` characters (the page shows the start of a longer one)."""
    return AfterValidator(_capped(limit))


Str = Annotated[str, Field(strict=True)]


Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Source(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    topic: Annotated[Str, _cap(249)]  # Kafka's longest topic name
    partition: Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]
    offset: Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]


class _ModelRef(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    version: Annotated[Str, _cap(64)]
    sha256: Annotated[Str, _cap(64)]


class PageAnomaly(BaseModel):
    """What the page shows of one anomaly: the score message's fields, checked and capped."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Annotated[Str, _cap(256)]
    anomaly: Literal[True]
    similarity: Unit
    metric: Annotated[Str, _cap(32)]
    threshold: Unit
    model: _ModelRef
    pixels: list[Unit]
    reconstruction: list[Unit]
    source: _Source
    ts: Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]
    detected_at: Annotated[Str, _cap(64)]


@dataclass(frozen=True, slots=True)
class PageModel:
    """The header's fixed facts: the model this worker scores with."""

    version: str
    sha256: str
    metric: str
    mode: str
    width: int
    height: int
    threshold: float

    @classmethod
    def of(cls, scorer: BatchScorer) -> "PageModel":
        model = scorer.model
        return cls(
            version=model.version,
            sha256=model.sha256,
            metric=scorer.metric,
            mode=model.metadata.mode,
            width=model.shape.width,
            height=model.shape.height,
            threshold=scorer.threshold,
        )


@dataclass(slots=True)
class _Second:
    second: int
    scored: int = 0
    anomalies: int = 0
    dead_letters: int = 0


class AnomalyFeed:
    """The last `capacity` anomalies (newest last, each with a sequence number) and per-second
    counts over the last `window` seconds. `add_batch` is thread-safe; everything else runs
    on the event loop given to `bind`."""

    def __init__(
        self,
        capacity: int,
        model: PageModel,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.model = model
        self.window = window
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        # Under the lock (written by the data path):
        self._pending: deque[bytes] = deque(maxlen=capacity)
        self._seconds: deque[_Second] = deque()
        self._wake_scheduled = False
        # Event loop only:
        self._shown: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = 0
        self._subscribers = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._version = 0
        self._last_refresh = -REFRESH_INTERVAL
        self.rejected = 0
        self._reject_log = Throttle(REJECT_LOG_INTERVAL, clock)
        self.closed = False

    # ---- any thread ----------------------------------------------------------------------

    def add_batch(self, anomalies: Sequence[bytes], scored: int, dead_letters: int) -> None:
        """One batch: the JSON of its anomalies (score messages), how many images it scored
        (anomalies included) and how many messages it sent to the dead-letter topic."""
        now = self._clock()
        with self._lock:
            self._pending.extend(anomalies[-self.capacity :])
            second = int(now)
            if not self._seconds or self._seconds[-1].second != second:
                self._seconds.append(_Second(second))
                self._forget_before(now)
            counts = self._seconds[-1]
            counts.scored += scored
            counts.anomalies += len(anomalies)
            counts.dead_letters += dead_letters
            # Nobody watching: the payloads wait (at most `capacity`) until someone does.
            if self._loop is None or not self._subscribers or self._wake_scheduled:
                return
            self._wake_scheduled = True
            loop = self._loop
        # A closed loop raises: the worker is stopping and nobody listens any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._schedule_refresh)

    def set_model(self, model: PageModel) -> None:
        """The model changed (a swap took effect): watchers get the new header."""
        with self._lock:
            self.model = model  # one reference, replaced whole: readers see old or new
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: the worker is stopping
                loop.call_soon_threadsafe(self._notify)

    def on_swap(self, scorer: BatchScorer, shadow: object = None) -> None:
        """A `SwapObserver` of the data path (called on its thread)."""
        self.set_model(PageModel.of(scorer))

    def observe_batch(self, result: BatchResult, seconds: float) -> None:
        """A `BatchObserver` of the data path (called on its thread)."""
        self.add_batch(
            [value for _, value in result.anomalies],
            scored=result.scored,
            dead_letters=len(result.dead),
        )

    def _forget_before(self, now: float) -> None:
        while self._seconds and self._seconds[0].second <= now - self.window - 1:
            self._seconds.popleft()

    # ---- the event loop ------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that serves the page; subscribers are woken on it."""
        self._loop = loop

    def close(self) -> None:
        """Wake every subscriber for the last time (the server is shutting down)."""
        self.closed = True
        self._notify()

    def snapshot(self) -> list[dict[str, Any]]:
        """The anomalies to show, newest first, each with its `seq`."""
        self._drain()
        return list(reversed(self._shown))

    def since(self, seq: int) -> list[dict[str, Any]]:
        """Anomalies newer than `seq` that are still kept, newest first."""
        self._drain()
        return [a for a in reversed(self._shown) if a["seq"] > seq]

    @property
    def last_seq(self) -> int:
        return self._seq

    def stats(self) -> dict[str, Any]:
        """Counts over the last `window` seconds (or since start, if shorter)."""
        now = self._clock()
        with self._lock:
            self._forget_before(now)
            recent = [s for s in self._seconds if s.second > now - self.window]
        return {
            "seconds": round(min(self.window, now - self._started), 3),
            "scored": sum(s.scored for s in recent),
            "anomalies": sum(s.anomalies for s in recent),
            "dead_letters": sum(s.dead_letters for s in recent),
            "rejected": self.rejected,
        }

    def subscribe(self) -> None:
        with self._lock:  # add_batch reads the count under the same lock
            self._subscribers += 1

    def unsubscribe(self) -> None:
        with self._lock:
            self._subscribers -= 1

    @property
    def subscribers(self) -> int:
        return self._subscribers

    async def wait(self, version: int, timeout: float) -> int:
        """Wait until a batch arrived after `version` (or `timeout`, or close); the new version."""
        if self._version == version and not self.closed:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        return self._version

    @property
    def version(self) -> int:
        return self._version

    def _schedule_refresh(self) -> None:
        assert self._loop is not None
        delay = self._last_refresh + REFRESH_INTERVAL - self._loop.time()
        self._loop.call_later(max(0.0, delay), self._refresh)

    def _refresh(self) -> None:
        # Batches that arrive until the lock is taken are part of this refresh; later ones
        # schedule the next.
        with self._lock:
            self._wake_scheduled = False
        self._last_refresh = self._loop.time() if self._loop else 0.0
        self._drain()
        self._notify()

    def _notify(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _drain(self) -> None:
        with self._lock:
            raw = list(self._pending)
            self._pending.clear()
        for payload in raw:
            entry = self._parse(payload)
            if entry is not None:
                self._seq += 1
                self._shown.append({"seq": self._seq, **entry})

    def _parse(self, payload: bytes) -> dict[str, Any] | None:
        try:
            anomaly = PageAnomaly.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "value"
            self._reject(f"{where}: {first['msg']}")
            return None
        size = self.model.width * self.model.height
        for name in ("pixels", "reconstruction"):
            count = len(getattr(anomaly, name))
            if count != size:
                self._reject(f"{name}: {count} values, expected {size}")
                return None
        return anomaly.model_dump(mode="json")

    def _reject(self, problem: str) -> None:
        self.rejected += 1
        if self._reject_log.allow("rejected")[0]:
            # pydantic's messages name the field and the rule, never the offending value.
            log.warning(
                "anomaly page: a payload cannot be shown (%s); %d so far", problem, self.rejected
            )
        return None
