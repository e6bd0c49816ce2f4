"""Shared fixtures. Kafka tests run against a real broker that this session starts itself."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from browser_harness import browser  # noqa: F401  # headless chromium, for the page's tests
from model_fixtures import seed_model_path  # noqa: F401  # shared trained-model fixture
from service.kafka.broker import LocalBroker, free_port


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A Kafka broker of our own on a free port, shared by the whole session."""
    with LocalBroker(port=free_port(), data_dir=tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
async def topic_factory(kafka_bootstrap: str) -> AsyncIterator[Callable[[int], Awaitable[str]]]:
    """`await topic_factory(partitions)` creates a fresh, uniquely named topic and returns its name.

    It returns only once every partition has a leader, so producers never race the creation.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()

    async def create(partitions: int) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        for _ in range(100):
            [topic] = await admin.describe_topics([name])
            leaders = [p["leader"] for p in topic["partitions"]]
            if topic["error_code"] == 0 and len(leaders) == partitions and min(leaders) >= 0:
                return name
            await asyncio.sleep(0.05)
        raise TimeoutError(f"topic {name} got no leaders for its {partitions} partitions")

    yield create
    await admin.close()
