"""Waiting for Kafka and creating the worker's topics before it starts consuming."""

import asyncio
import logging
import time
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)

from service.config import Settings
from service.errors import PixelwatchError
from service.kafka.diagnose import KafkaRefused, quiet_bootstrap, refusal
from service.kafka.options import client_options

log = logging.getLogger(__name__)


class BrokerUnavailable(PixelwatchError):
    """Kafka did not answer within the start-up timeout."""


def worker_topics(settings: Settings) -> list[str]:
    topics = [settings.input_topic, settings.anomalies_topic, settings.dlq_topic]
    topics.append(settings.shadow_topic)
    if settings.scores_enabled:
        topics.append(settings.scores_topic)
    return topics


async def connect_admin(settings: Settings, wait: float) -> AIOKafkaAdminClient:
    """An admin client, retrying with one visible log line per attempt for up to `wait` seconds.

    A broker that answers and refuses us (credentials, TLS) is not retried: one line names
    the cause at once."""
    deadline = time.monotonic() + wait
    delay, attempt = 0.5, 1
    while True:
        admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000)
        try:
            with quiet_bootstrap():
                await admin.start()
            return admin
        except KafkaConnectionError as exc:
            await admin.close()
            refused = await refusal(settings)
            if refused is not None:
                raise KafkaRefused(refused) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnavailable(
                    f"Kafka at {settings.bootstrap} not reachable after {wait:.0f}s ({exc})"
                ) from None
            log.warning(
                "Kafka at %s not reachable (attempt %d), retrying in %.1fs",
                settings.bootstrap,
                attempt,
                delay,
            )
            await asyncio.sleep(min(delay, left))
            delay, attempt = min(delay * 2, 10.0), attempt + 1


@dataclass(frozen=True)
class TopicSetup:
    """What start-up found: the topics it created, and every worker topic's partitions."""

    created: list[str]
    partitions: dict[str, int]
    expected: int  # PIXELWATCH_PARTITIONS

    @property
    def mismatched(self) -> dict[str, int]:
        return {t: n for t, n in self.partitions.items() if n != self.expected}


async def ensure_topics(settings: Settings, wait: float = 120.0) -> TopicSetup:
    """Create the worker's topics that do not exist yet, and count every one's partitions."""
    admin = await connect_admin(settings, wait)
    try:
        created = await _create_missing(admin, settings)
        partitions = await _partition_counts(admin, worker_topics(settings))
    finally:
        await admin.close()
    setup = TopicSetup(created, partitions, settings.partitions)
    for topic, count in setup.mismatched.items():
        log.warning(
            "topic %s has %d partitions, PIXELWATCH_PARTITIONS is %d; using it as it is "
            "(the input topic's partitions bound how many workers share the work)",
            topic, count, settings.partitions,
        )  # fmt: skip
    return setup


async def _create_missing(admin: AIOKafkaAdminClient, settings: Settings) -> list[str]:
    existing = set(await admin.list_topics())
    missing = [t for t in worker_topics(settings) if t not in existing]
    if not missing:
        return []
    try:
        response = await admin.create_topics(
            [NewTopic(t, settings.partitions, settings.replication_factor) for t in missing]
        )
    except KafkaError as exc:
        raise PixelwatchError(f"cannot create topics {missing}: {exc}") from None
    # The broker answers per topic; aiokafka hands the error codes back unraised.
    errors = {name: (code, message) for name, code, *message in response.topic_errors}
    created: list[str] = []
    for topic in missing:  # in our order: the broker's answer need not keep it
        code, message = errors[topic]
        if code == TopicAlreadyExistsError.errno:
            continue  # another worker created it first
        if code:
            detail = message[0] if message and message[0] else for_code(code).__name__
            raise PixelwatchError(f"cannot create topic {topic}: {detail}")
        created.append(topic)
    if created:
        log.info("created topics %s with %d partitions", created, settings.partitions)
    return created


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Partitions per topic; a topic just created may take a moment to be described."""
    deadline = time.monotonic() + 30.0
    while True:
        described = await admin.describe_topics(topics)
        counts = {d["topic"]: len(d["partitions"]) for d in described if not d["error_code"]}
        if counts.keys() >= set(topics) and all(counts.values()):
            return counts
        if time.monotonic() > deadline:
            missing = sorted(set(topics) - {t for t, n in counts.items() if n})
            raise PixelwatchError(f"topics {missing} cannot be described after creating them")
        await asyncio.sleep(0.2)


async def wait_for_partitions(settings: Settings, topic: str, wait: float) -> list[int]:
    """The partition numbers of `topic`, once it exists (a worker creates it at start-up)."""
    admin = await connect_admin(settings, wait)
    try:
        deadline = time.monotonic() + wait
        while topic not in await admin.list_topics():
            if time.monotonic() > deadline:
                raise PixelwatchError(f"topic {topic} was not created within {wait:.0f}s")
            await asyncio.sleep(0.25)
        [description] = await admin.describe_topics([topic])
        return sorted(p["partition"] for p in description["partitions"])
    finally:
        await admin.close()
