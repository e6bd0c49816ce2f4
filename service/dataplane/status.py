"""What the data path tells the rest of the process: probes, the page and metrics read it.

The data path writes it from its own thread; readers only read plain attributes, each
replaced whole, so no lock is needed.
"""

import time
from dataclasses import dataclass


@dataclass
class DataPathStatus:
    running: bool = False
    assigned: int = 0  # input partitions this worker owns now
    last_progress: float | None = None  # monotonic time of the last batch handled
    lag: int | None = None  # messages behind on the owned partitions; None before measured
    error: str | None = None  # why the data path stopped, if it stopped on its own

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def seconds_since_progress(self) -> float | None:
        return None if self.last_progress is None else time.monotonic() - self.last_progress
