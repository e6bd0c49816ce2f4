"""Shared fixtures. Kafka tests run against a real broker that this session starts itself."""

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from browser_harness import browser  # noqa: F401  # headless chromium, for the page's tests
from model_fixtures import (  # noqa: F401  # shared trained-model fixtures
    candidate_model_path,
    seed_model_path,
)
from service.kafka.broker import LocalBroker, free_port
from worker_harness import WorkerProcess, WorkerTopics, worker_env

StartWorker = Callable[..., WorkerProcess]


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


@pytest.fixture
def topics() -> WorkerTopics:
    return WorkerTopics()


@pytest.fixture
def start_worker(
    kafka_bootstrap: str,
    seed_model_path: Path,  # noqa: F811  # the fixture imported above
    topics: WorkerTopics,
    tmp_path: Path,
) -> Iterator[StartWorker]:
    """`start_worker(**PIXELWATCH_vars)` runs `pixelwatch worker` on the test topics; every
    worker gets its own state dir and metrics port, and is killed at the end of the test."""
    workers: list[WorkerProcess] = []

    def start(**extra: str) -> WorkerProcess:
        state = tmp_path / f"state-{len(workers)}"
        env = worker_env(kafka_bootstrap, topics, seed_model_path, state, **extra)
        worker = WorkerProcess(env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(signal.SIGKILL)
