"""DataPathStatus: when the probes call the worker alive and ready (a hand-set clock)."""

from dataclasses import dataclass

from service.dataplane.pipeline import BatchResult
from service.dataplane.status import REASON_LIMIT, DataPathStatus

STALL = 30.0


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_without_input_partitions_is_alive_but_not_ready() -> None:
    status = DataPathStatus(Clock())
    assert status.liveness().ok
    verdict = status.readiness(STALL)
    assert not verdict.ok
    assert verdict.reason == "no input partition assigned"
    assert verdict.partitions == 0


def test_an_assigned_worker_with_nothing_to_do_stays_ready_however_long_it_idles() -> None:
    clock = Clock()
    status = DataPathStatus(clock)
    status.set_assigned(4)
    status.set_lag(0)
    clock.now += 3600
    verdict = status.readiness(STALL)
    assert verdict.ok and verdict.reason == ""
    assert (verdict.partitions, verdict.lag) == (4, 0)


def test_messages_waiting_without_progress_make_the_worker_unready_after_a_stall() -> None:
    clock = Clock()
    status = DataPathStatus(clock)
    status.set_assigned(2)
    status.set_lag(0)
    clock.now += 600  # long idle: the stall clock starts when messages begin to wait
    status.set_lag(120)
    clock.now += STALL
    assert status.readiness(STALL).ok
    clock.now += 1
    verdict = status.readiness(STALL)
    assert not verdict.ok
    assert verdict.reason == f"no progress for 31 s while 120 messages wait (limit {STALL:g} s)"
    assert verdict.idle_seconds == 31

    status.observe_batch(BatchResult(messages=[]), 0.01)  # a batch is progress
    assert status.readiness(STALL).ok
    clock.now += STALL + 1
    assert not status.readiness(STALL).ok
    status.set_lag(0)  # caught up: nothing waits, so no progress is due
    assert status.readiness(STALL).ok


def test_a_new_assignment_restarts_the_stall_clock() -> None:
    clock = Clock()
    status = DataPathStatus(clock)
    status.set_assigned(1)
    status.set_lag(50)
    clock.now += STALL + 5
    assert not status.readiness(STALL).ok
    status.set_assigned(0)  # a rebalance revokes everything, then assigns again
    assert status.readiness(STALL).reason == "no input partition assigned"
    status.set_assigned(3)
    assert status.readiness(STALL).ok
    assert status.readiness(STALL).partitions == 3


def test_an_unknown_lag_does_not_make_an_assigned_worker_unready() -> None:
    clock = Clock()
    status = DataPathStatus(clock)
    status.set_assigned(1)
    clock.now += 10 * STALL
    verdict = status.readiness(STALL)
    assert verdict.ok and verdict.lag is None


def test_a_crash_fails_both_probes_for_good_with_an_escaped_capped_reason() -> None:
    status = DataPathStatus(Clock())
    status.set_assigned(1)
    status.progressed()
    status.crashed(ValueError("bad\nINFO forged log line " + "x" * 500))
    status.crashed(KeyError("a later one"))  # the first crash is the one to report
    for verdict in (status.liveness(), status.readiness(STALL)):
        assert not verdict.ok
        assert verdict.reason.startswith("data path crashed: ValueError('bad\\nINFO")
        assert "\n" not in verdict.reason
        assert len(verdict.reason) <= len("data path crashed: ") + REASON_LIMIT
    status.progressed()
    assert not status.liveness().ok
