"""Runs the real `pixelwatch worker` command against the test broker, and reads its topics."""

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from service.broker import free_port


@dataclass
class WorkerTopics:
    """A fresh set of topic names and a consumer group, so tests never see each other's data."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def images(self) -> str:
        return f"images-{self.run}"

    @property
    def anomalies(self) -> str:
        return f"anomalies-{self.run}"

    @property
    def scores(self) -> str:
        return f"scores-{self.run}"

    @property
    def dlq(self) -> str:
        return f"dlq-{self.run}"

    def env(self) -> dict[str, str]:
        return {
            "PIXELWATCH_INPUT_TOPIC": self.images,
            "PIXELWATCH_ANOMALIES_TOPIC": self.anomalies,
            "PIXELWATCH_SCORES_TOPIC": self.scores,
            "PIXELWATCH_DLQ_TOPIC": self.dlq,
            "PIXELWATCH_GROUP_ID": f"group-{self.run}",
        }


class WorkerProcess:
    """`pixelwatch worker` in a subprocess; its output goes to a log file for diagnosis."""

    def __init__(self, env: dict[str, str], log: Path, args: Iterable[str] = ()) -> None:
        self.log = log
        self._handle = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", *args],
            env={**os.environ, **env},
            stdout=self._handle,
            stderr=subprocess.STDOUT,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            self._handle.close()
        return code

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def worker_env(
    bootstrap: str, topics: WorkerTopics, model: Path, data_dir: Path, **extra: str
) -> dict[str, str]:
    return {
        "PIXELWATCH_BOOTSTRAP": bootstrap,
        "PIXELWATCH_MODEL": str(model),
        "PIXELWATCH_DATA_DIR": str(data_dir),
        "PIXELWATCH_METRICS_PORT": str(free_port()),
        "PIXELWATCH_BATCH_WINDOW": "0.02",
        **topics.env(),
        **extra,
    }


async def produce(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_for_topic(
    bootstrap: str, topic: str, alive: Callable[[], bool], timeout: float = 60.0
) -> int:
    """Wait until `topic` exists (the worker creates it); return its partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while topic not in await admin.list_topics():
            assert time.monotonic() < deadline, f"{topic} was not created"
            assert alive(), "the worker exited"
            await asyncio.sleep(0.2)
        [description] = await admin.describe_topics([topic])
        return len(description["partitions"])
    finally:
        await admin.close()


async def consume_until(
    bootstrap: str,
    topics: list[str],
    done: Callable[[dict[str, list[ConsumerRecord]]], bool],
    timeout: float = 60.0,
    alive: Callable[[], bool] = lambda: True,
) -> dict[str, list[ConsumerRecord]]:
    """Read every partition of `topics` from the start until `done(records)` or timeout."""
    partitions = {t: await wait_for_topic(bootstrap, t, alive, timeout) for t in topics}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: dict[str, list[ConsumerRecord]] = {t: [] for t in topics}
    try:
        consumer.assign([TopicPartition(t, p) for t, n in partitions.items() for p in range(n)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while not done(records):
            counts = {t: len(r) for t, r in records.items()}
            assert time.monotonic() < deadline, f"timed out with {counts}"
            assert alive(), f"the worker exited; got {counts}"
            batch = await consumer.getmany(timeout_ms=200)
            for tp, recs in batch.items():
                records[tp.topic].extend(recs)
        return records
    finally:
        await consumer.stop()
