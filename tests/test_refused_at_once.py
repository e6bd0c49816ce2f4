"""Records `produce` refuses at once (before queueing them) are replaced like records the
broker refuses later. Unit tests of the data plane's own logic: the producer is a fake that
refuses some topics; the real-broker tests of the same promises are in test_delivery.py."""

from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from kafka_messages import image_json, kafka_message
from service.config import Settings
from service.dataplane.loop import DataPlane, DataPlaneError, is_marker
from service.dataplane.pipeline import BatchScorer
from service.schemas import HEADER_MESSAGE, HEADER_REASON
from service.scoring.model import load_model


class RefusingProducer:
    """Takes every record but those for `refused` topics, or over `limit` bytes."""

    def __init__(self, refused: dict[str, int], limit: int = 1 << 20) -> None:
        self.refused = refused  # topic -> librdkafka error code
        self.limit = limit
        self.taken: list[tuple[str, bytes | None, bytes | None, Any]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | None, headers: Any) -> None:
        if topic in self.refused:
            raise KafkaException(KafkaError(self.refused[topic]))
        if value is not None and len(value) > self.limit:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.taken.append((topic, key, value, headers))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return 0


@pytest.fixture
def plane(seed_model_path: Path) -> DataPlane:
    return DataPlane(Settings(), BatchScorer(load_model(seed_model_path)))


def images(count: int) -> list[Any]:
    return [
        kafka_message(image_json([0.0] * 64, id=f"img-{n}"), n, key=f"img-{n}".encode())
        for n in range(count)
    ]


def test_an_output_to_a_topic_the_client_no_longer_knows_becomes_a_delivery_dead_letter(
    plane: DataPlane,
) -> None:
    settings = plane.settings
    producer = RefusingProducer({settings.scores_topic: KafkaError._UNKNOWN_TOPIC})
    plane._producer = producer  # type: ignore[assignment]

    plane._handle(images(3))  # before: the worker stopped at the first such record
    plane._barrier("commit")

    dead = [
        (key, headers) for topic, key, _, headers in producer.taken if topic == settings.dlq_topic
    ]
    assert [key for key, _ in dead] == [b"img-0", b"img-1", b"img-2"]
    for _, headers in dead:
        found = {k: v.decode() for k, v in headers}
        assert found[HEADER_REASON] == "delivery"
        assert found[HEADER_MESSAGE].startswith(f"output to {settings.scores_topic} refused: ")
        assert "_UNKNOWN_TOPIC" in found[HEADER_MESSAGE]
    assert plane._stored == {}  # nothing assigned here, but the barrier passed: all settled
    assert plane.unconfirmed == 0


def test_a_dead_letter_over_the_clients_size_limit_keeps_its_headers_and_carries_the_marker(
    plane: DataPlane,
) -> None:
    settings = plane.settings
    producer = RefusingProducer({}, limit=2000)
    plane._producer = producer  # type: ignore[assignment]
    big = kafka_message(b"{" + b" " * 5000, 7, key=b"big")  # invalid JSON, over the limit

    plane._handle([big])
    plane._barrier("commit")

    [(topic, key, value, headers)] = producer.taken
    assert (topic, key) == (settings.dlq_topic, b"big")
    assert value is not None and is_marker(value)
    assert orjson.loads(value)["size"] == 5001
    assert dict(headers)[HEADER_REASON] == b"invalid_json"


def test_a_dead_letter_the_client_refuses_at_once_stops_the_data_plane(plane: DataPlane) -> None:
    settings = plane.settings
    producer = RefusingProducer({settings.dlq_topic: KafkaError._UNKNOWN_TOPIC})
    plane._producer = producer  # type: ignore[assignment]

    plane._handle([kafka_message(b"{not json", 0, key=b"bad")])
    with pytest.raises(DataPlaneError, match=f"dead-letter topic {settings.dlq_topic} refused"):
        plane._barrier("commit")
    assert plane.unconfirmed == 1  # its batch stays unsettled: never committed
