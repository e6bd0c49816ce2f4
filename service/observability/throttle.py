"""At most one log line per cause per interval: an outage must not write hundreds a second.

>>> clock = iter([0.0, 0.2, 0.4, 1.5]).__next__
>>> throttle = Throttle(interval=1.0, clock=clock)
>>> [throttle.allow("broker down") for _ in range(4)]
[(True, 0), (False, 0), (False, 0), (True, 2)]
>>> clock = iter([0.0, 0.2, 1.5]).__next__
>>> throttle = Throttle(interval=1.0, clock=clock)
>>> [throttle.suffix("broker down") for _ in range(3)]
['', None, ' (1 more since the last line)']
"""

import time
from collections.abc import Callable


class Throttle:
    """Says whether a line for `cause` may be written now, and how many were held back."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, cause: str) -> tuple[bool, int]:
        now = self._clock()
        last = self._last.get(cause)
        if last is not None and now - last < self.interval:
            self._held[cause] = self._held.get(cause, 0) + 1
            return False, 0
        self._last[cause] = now
        return True, self._held.pop(cause, 0)

    def suffix(self, cause: str) -> str | None:
        """None: hold the line back; else what to end it with (how many were held back)."""
        allowed, held = self.allow(cause)
        if not allowed:
            return None
        return f" ({held} more since the last line)" if held else ""
