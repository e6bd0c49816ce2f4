"""The worker's two sources of models, as services of the faust worker: the models topic, read
in full by every worker, and the model file, polled for changes.

Why not a faust agent or a GlobalTable for the models topic? Every worker must see every
record of it, whichever worker owns what. An agent shares its topic's partitions across the
consumer group, the opposite. A GlobalTable makes every worker read every partition of its
changelog, and a changelog topic can be named explicitly, so it came close, but:

- its records are applied to the table's store as they come, with their headers dropped:
  we need the headers (version, sha256, role) and must validate a model *before* it counts,
  since the newest record is not necessarily a valid one;
- it offers no hook for "a record arrived" (we would subclass faust's changelog handling);
- its state follows the control group's rebalances, and outside writers to a global table's
  changelog are a known weak spot (faust-streaming/faust#283: with several instances, the
  one whose partition is active ignores records it did not write itself).

So each worker runs its own reader: an aiokafka consumer in no consumer group, assigned every
partition of the topic from the beginning. It reads up to the end once before the worker
starts (so the data plane starts with the newest valid model), then follows new records for
as long as the worker runs. Reading the whole topic is cheap: compaction keeps one record
per key, and there are a few keys per published model.
"""

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from service.config import Settings
from service.lifecycle.registry import (
    ModelRecord,
    assign_all,
    consumer,
    from_consumer,
    read_to_end,
    sha256_of,
)
from service.observability.throttle import Throttle

log = logging.getLogger("pixelwatch.models")

OnRecord = Callable[[ModelRecord], Awaitable[None]]


class ModelFollower(Service):
    """Reads the models topic: `catch_up` once, then every new record to `on_record`."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.reader: AIOKafkaConsumer | None = None
        self.on_record: OnRecord | None = None
        self._assigned: list[TopicPartition] = []
        self._throttle = Throttle(60.0)

    async def catch_up(self, wait: float) -> list[ModelRecord]:
        """Everything on the topic now, in order; the reader then stays at its end."""
        reader = self.reader = consumer(self.settings)
        await reader.start()
        self._assigned = await assign_all(reader, self.settings, self.settings.models_topic, wait)
        return await read_to_end(reader, self._assigned)

    @Service.task
    async def _follow(self) -> None:
        reader = self.reader
        assert reader is not None, "catch_up first"
        while not self.should_stop:
            try:
                batch = await reader.getmany(*self._assigned, timeout_ms=1000)
            except Exception as exc:  # the broker went away: aiokafka reconnects by itself
                allowed, _ = self._throttle.allow("read")
                if allowed:
                    log.warning("reading %s: %s", self.settings.models_topic, exc)
                await self.sleep(1.0)
                continue
            for records in batch.values():
                for raw in records:
                    record = from_consumer(raw)
                    if record is not None and self.on_record is not None:
                        try:
                            await self.on_record(record)
                        except Exception:  # one bad record must not stop the following
                            log.exception("handling %s@%d", raw.topic, raw.offset)

    async def on_stop(self) -> None:
        if self.reader is not None:
            await self.reader.stop()


Signature = tuple[int, int, int]


def signature(path: Path) -> Signature | None:
    """What changes when a file is replaced or rewritten (a Kubernetes ConfigMap update swaps
    a symlink; `stat` follows it)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class ModelFileWatcher(Service):
    """Polls the model file and hands its content to `on_change` when it changed."""

    def __init__(
        self,
        path: Path,
        interval: float,
        sha256: str | None,
        on_change: Callable[[bytes], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.interval = interval
        self.on_change = on_change
        self._signature = signature(path)
        self._sha256 = sha256  # of the content in use

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            current = signature(self.path)
            if current is None or current == self._signature:
                continue
            self._signature = current
            try:
                data = await asyncio.to_thread(self.path.read_bytes)
            except OSError as exc:
                log.warning("model file %s: %s", self.path, exc.strerror or exc)
                continue
            digest = sha256_of(data)
            if digest == self._sha256:
                continue  # touched, or rewritten with the same bytes
            self._sha256 = digest
            try:
                await self.on_change(data)
            except Exception:
                log.exception("model file %s", self.path)
