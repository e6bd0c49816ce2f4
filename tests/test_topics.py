"""The worker's start-up topic creation against the real broker."""

import logging
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.config import Settings
from service.errors import PixelwatchError
from service.kafka.topics import ensure_topics

pytestmark = pytest.mark.kafka


def settings_for(bootstrap: str, tmp_path: Path, **overrides: object) -> Settings:
    run = uuid.uuid4().hex[:8]
    return Settings(
        bootstrap=bootstrap,
        model=tmp_path / "unused.onnx",
        input_topic=f"in-{run}",
        scores_topic=f"scores-{run}",
        anomalies_topic=f"anomalies-{run}",
        dlq_topic=f"dlq-{run}",
        shadow_topic=f"shadow-{run}",
        partitions=3,
        **overrides,  # type: ignore[arg-type]
    )


async def partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        return {d["topic"]: len(d["partitions"]) for d in described if not d["error_code"]}
    finally:
        await admin.close()


async def test_missing_topics_are_created_once_and_existing_ones_are_left_alone(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = settings_for(kafka_bootstrap, tmp_path)
    wanted = [
        settings.input_topic,
        settings.anomalies_topic,
        settings.dlq_topic,
        settings.shadow_topic,
        settings.scores_topic,
    ]

    first = await ensure_topics(settings, wait=30)
    assert first.created == wanted
    assert first.partitions == dict.fromkeys(wanted, 3) and first.mismatched == {}
    assert (await ensure_topics(settings, wait=30)).created == []
    assert await partition_counts(kafka_bootstrap, wanted) == dict.fromkeys(wanted, 3)


async def test_an_existing_topic_with_another_partition_count_is_reported_and_kept(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(kafka_bootstrap, tmp_path)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.scores_topic, 1, 1)])
    finally:
        await admin.close()

    with caplog.at_level(logging.WARNING, logger="service.kafka.topics"):
        setup = await ensure_topics(settings, wait=30)

    assert setup.mismatched == {settings.scores_topic: 1}
    assert setup.partitions[settings.input_topic] == 3
    [line] = [r.getMessage() for r in caplog.records if "partitions" in r.getMessage()]
    assert line.startswith(
        f"topic {settings.scores_topic} has 1 partitions, PIXELWATCH_PARTITIONS is 3"
    )
    assert await partition_counts(kafka_bootstrap, [settings.scores_topic]) == {
        settings.scores_topic: 1
    }


async def test_a_topic_the_broker_refuses_fails_start_up_with_its_reason(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # One broker cannot hold three replicas; the worker must not go on as if it had the topic.
    settings = settings_for(kafka_bootstrap, tmp_path, replication_factor=3)

    with pytest.raises(PixelwatchError) as failure:
        await ensure_topics(settings, wait=30)

    message = str(failure.value)
    assert message.startswith(f"cannot create topic {settings.input_topic}: ")
    assert "replication factor" in message
    assert await partition_counts(kafka_bootstrap, [settings.input_topic]) == {}
