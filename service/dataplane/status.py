"""What the data path reports about itself, for the `/healthz` and `/ready` probes.

The data path (whichever thread runs it) writes; the web server's event loop reads. Every
method takes one lock for a few assignments, so either side may call from any thread.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from service.dataplane.pipeline import BatchResult

REASON_LIMIT: Final = 200
"""Longest crash reason kept: exception texts may quote message contents."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A probe's answer: `ok`, and why not (empty when ok), with the facts it rests on."""

    ok: bool
    reason: str
    partitions: int
    lag: int | None
    idle_seconds: float | None


def _summary(exc: BaseException) -> str:
    # repr() names the exception and escapes control characters, so a message cannot forge
    # log or response lines.
    text = repr(exc)
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"


class DataPathStatus:
    """Assigned partitions, the last progress, the current lag, and a crash if one happened.

    Ready means: partitions are assigned, and while messages wait (lag > 0) the data path
    has made progress within `stall_timeout` seconds. The stall clock starts at the latest of
    the last progress, the assignment and the moment messages started to wait, so a worker
    idle for an hour is not judged stalled by the first message that arrives.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._partitions = 0
        self._lag: int | None = None
        self._last_progress: float | None = None
        self._assigned_at: float | None = None
        self._waiting_since: float | None = None
        self._crash: str | None = None

    # ---- written by the data path ------------------------------------------------------

    def set_assigned(self, partitions: int) -> None:
        """The number of input partitions this worker now owns."""
        with self._lock:
            if partitions and not self._partitions:
                self._assigned_at = self._clock()
            self._partitions = partitions

    def set_lag(self, lag: int | None) -> None:
        """Messages waiting in the owned input partitions (None: not known)."""
        with self._lock:
            if lag and not self._lag:
                self._waiting_since = self._clock()
            self._lag = lag

    def progressed(self) -> None:
        """The data path finished a batch (its outputs handed to the producer)."""
        with self._lock:
            self._last_progress = self._clock()

    def observe_batch(self, result: BatchResult, seconds: float) -> None:
        """A `BatchObserver`: every batch is progress."""
        self.progressed()

    def crashed(self, exc: BaseException) -> None:
        """The data path died; the process must be restarted (kept for good: a restarted
        consumer loop may sit on its partitions without reading them)."""
        with self._lock:
            if self._crash is None:
                self._crash = _summary(exc)

    # ---- read by the probes ------------------------------------------------------------

    def liveness(self) -> Verdict:
        with self._lock:
            reason = f"data path crashed: {self._crash}" if self._crash else ""
            return self._verdict(not reason, reason)

    def readiness(self, stall_timeout: float) -> Verdict:
        with self._lock:
            if self._crash:
                return self._verdict(False, f"data path crashed: {self._crash}")
            if not self._partitions:
                return self._verdict(False, "no input partition assigned")
            idle = self._idle_seconds()
            if self._lag and idle is not None and idle > stall_timeout:
                return self._verdict(
                    False,
                    f"no progress for {idle:.0f} s while {self._lag} messages wait "
                    f"(limit {stall_timeout:g} s)",
                )
            return self._verdict(True, "")

    def _idle_seconds(self) -> float | None:
        candidates = (self._last_progress, self._assigned_at, self._waiting_since)
        marks = [m for m in candidates if m is not None]
        return self._clock() - max(marks) if marks else None

    def _verdict(self, ok: bool, reason: str) -> Verdict:
        return Verdict(ok, reason, self._partitions, self._lag, self._idle_seconds())
