"""Log levels and the outage throttle: at most one line per second per cause from the Kafka
clients, with a count of what was held back; our own lines always pass."""

import io
import logging
from collections.abc import Iterator

import pytest
from mode.utils.logging import ExtensionFormatter

from service.observability.logs import OutageThrottle, librdkafka_level, throttle_handlers
from service.observability.throttle import Throttle


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger tree with one handler formatted as mode formats the worker's log."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(ExtensionFormatter(stream=out, fmt="%(name)s %(message)s"))
    root = logging.getLogger("captured")
    root.addHandler(handler)
    root.propagate = False
    yield root, out
    root.removeHandler(handler)


def test_a_storm_of_one_cause_is_one_line_a_second_with_the_count_held_back(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    root, out = captured
    clock = iter([0.0, 0.1, 0.2, 0.3, 1.5, 1.6]).__next__
    throttle = OutageThrottle()
    throttle._throttle._clock = clock  # a test clock instead of waiting seconds
    root.handlers[0].addFilter(throttle)
    librdkafka = logging.getLogger("captured.x")
    librdkafka.name = "pixelwatch.librdkafka"  # the name the data plane gives librdkafka
    for _ in range(5):
        librdkafka.warning("%s [%s] %s", "FAIL", "rk#c1", "Connection refused")
    ours = logging.getLogger("captured.y")
    ours.name = "pixelwatch.dataplane"
    ours.warning("images[0]@%d -> DLQ", 7)

    assert out.getvalue().splitlines() == [
        "pixelwatch.librdkafka FAIL [rk#c1] Connection refused",
        "pixelwatch.librdkafka FAIL [rk#c1] Connection refused (3 more since the last line)",
        "pixelwatch.dataplane images[0]@7 -> DLQ",
    ]


def test_throttle_handlers_covers_every_handler_and_info_lines_pass() -> None:
    logger = logging.Logger("standalone")
    first, second = logging.NullHandler(), logging.NullHandler()
    logger.addHandler(first)
    logger.addHandler(second)
    throttle = throttle_handlers(logger)
    assert first.filters == [throttle] and second.filters == [throttle]
    info = logging.LogRecord("aiokafka", logging.INFO, __file__, 1, "joined", (), None)
    assert all(throttle.filter(info) for _ in range(10))


def test_librdkafka_logs_at_the_configured_level() -> None:
    assert [librdkafka_level(level) for level in ("DEBUG", "INFO", "WARNING", "ERROR")] == [
        7, 6, 4, 3,
    ]  # fmt: skip


def test_a_throttled_cause_is_held_back_and_the_next_line_says_how_many_were() -> None:
    throttle = Throttle(interval=1.0, clock=iter([0.0, 0.2, 0.4, 1.5, 1.6]).__next__)
    assert [throttle.suffix("delivery") for _ in range(5)] == [
        "",
        None,
        None,
        " (2 more since the last line)",
        None,
    ]
