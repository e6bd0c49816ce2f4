"""Log levels and rate limits that every library in the process honours.

`PIXELWATCH_LOG_LEVEL` applies to our loggers, faust's and mode's, aiokafka's and librdkafka's
(whose own threshold is a client property, see `librdkafka_level`). During a broker outage the
Kafka clients repeat the same complaint many times a second; `OutageThrottle`, on the process's
log handlers, lets through at most one line per second per logger and message, and says how
many it held back.
"""

import logging
from typing import Final

from service.observability.throttle import Throttle

LEVELS: Final = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}
# librdkafka's `log_level` property takes syslog severities.
_SYSLOG: Final = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
# The Kafka clients and the runtime around them: the sources of outage storms.
THROTTLED: Final = ("aiokafka", "faust", "mode", "pixelwatch.librdkafka")


def use_level(level: str) -> None:
    """Apply `level` to the root logger, unless `--verbose` already asked for DEBUG."""
    root = logging.getLogger()
    if root.level == logging.DEBUG:
        return
    number = LEVELS[level]
    root.setLevel(number)
    # aiokafka narrates every group join and metadata update at INFO.
    logging.getLogger("aiokafka").setLevel(max(number, logging.WARNING))


def librdkafka_level(level: str) -> int:
    """The syslog severity up to which librdkafka emits log lines at `level`."""
    return _SYSLOG[LEVELS[level]]


class OutageThrottle(logging.Filter):
    """At most one WARNING-or-worse line per `interval` per (logger, message template) from
    the Kafka clients and the runtime; lines of our own data path pass untouched."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__()
        self._throttle = Throttle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(THROTTLED):
            return True
        suffix = self._throttle.suffix(f"{record.name}\0{record.msg}")
        if suffix:
            record.msg = f"{record.getMessage()}{suffix}"
            record.args = ()  # mode's formatter would make None into (None,)
        return suffix is not None


def throttle_handlers(logger: logging.Logger, interval: float = 1.0) -> OutageThrottle:
    """Put one `OutageThrottle` on every handler of `logger` (the root logger, in practice)."""
    throttle = OutageThrottle(interval)
    for handler in logger.handlers:
        handler.addFilter(throttle)
    return throttle
