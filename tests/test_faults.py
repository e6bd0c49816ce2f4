"""The fault suite's fast subset on the session broker (`make chaos` runs all of it): the
poison set. A killed worker and an undeliverable output are in test_delivery.py."""

from pathlib import Path

import pytest

from chaos.suite import Lab, poison
from service.kafka.broker import LocalBroker

pytestmark = pytest.mark.kafka


def test_the_poison_set_is_dead_lettered_and_the_worker_carries_on(
    kafka_broker: LocalBroker, seed_model_path: Path, tmp_path: Path
) -> None:
    lab = Lab(kafka_broker, seed_model_path, tmp_path)
    try:
        result = poison(lab)
    finally:
        lab.kill_workers()

    assert result.problems == []
    assert result.sent == 24 and result.lost == 0 and result.duplicates == 0
    [reasons, _] = result.notes
    assert reasons.startswith(
        "ts-1e30: schema; near-1mib: oversized; newline-field: schema; long-field: schema"
    )
