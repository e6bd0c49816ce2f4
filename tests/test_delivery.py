"""Nothing lost, on the real broker: an offset is committed only once its outputs or dead
letters are in Kafka, whatever the broker refuses and however the worker is stopped."""

import asyncio
import hashlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import orjson
import pytest
from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from confluent_kafka import Consumer, TopicPartition

from conftest import StartWorker
from service.schemas import HEADER_FORMAT, HEADER_ID, HEADER_MESSAGE, HEADER_REASON
from worker_harness import (
    Outgoing,
    WorkerProcess,
    WorkerTopics,
    consume_until,
    metric_samples,
    metric_value,
    produce,
    wait_for_topic,
)

pytestmark = pytest.mark.kafka

Records = dict[str, list[ConsumerRecord]]


def images(count: int, prefix: str = "m", seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((count, 64)) < 0.3).astype(np.float32)
    option = orjson.OPT_SERIALIZE_NUMPY
    return [
        (
            f"{prefix}{i}".encode(),
            orjson.dumps({"id": f"{prefix}{i}", "pixels": row}, option=option),
        )
        for i, row in enumerate(pixels)
    ]


async def create_topic(bootstrap: str, name: str, partitions: int, **config: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


async def alter_topic(bootstrap: str, name: str, **config: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=config)])
    finally:
        await admin.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offsets (-1001: none), read without joining the group."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = reader.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in found]
    finally:
        reader.close()


async def stream(bootstrap: str, topic: str, messages: Sequence[Outgoing], rate: float) -> None:
    """Produce `messages` at about `rate` a second, in chunks of a tenth of a second."""
    chunk = max(1, int(rate / 10))
    for start in range(0, len(messages), chunk):
        await produce(bootstrap, topic, messages[start : start + chunk])
        await asyncio.sleep(0.1)


async def logged(worker: WorkerProcess, text: str, timeout: float = 120.0) -> None:
    """Wait until the worker's log has `text`."""
    deadline = time.monotonic() + timeout
    while text not in worker.output():
        assert worker.alive(), worker.output()[-2000:]
        assert time.monotonic() < deadline, f"no {text!r} in the worker's log"
        await asyncio.sleep(0.2)


def ids(records: Records, *topics: str) -> Counter[str]:
    return Counter(r.key.decode() for t in topics for r in records[t])


async def test_an_output_the_broker_refuses_is_replaced_by_a_dead_letter(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    # A scores topic whose record batches may not exceed 100 bytes refuses every output.
    await create_topic(kafka_bootstrap, topics.scores, 2, **{"max.message.bytes": "100"})
    worker = start_worker(PIXELWATCH_PARTITIONS="2")
    sent = images(30)
    await produce(kafka_bootstrap, topics.images, sent)

    records = await consume_until(
        kafka_bootstrap, [topics.dlq], lambda r: len(r[topics.dlq]) >= len(sent), alive=worker.alive
    )
    dead = {r.key.decode(): r for r in records[topics.dlq]}
    assert sorted(dead) == sorted(k.decode() for k, _ in sent)
    values = dict(sent)
    for key, record in dead.items():
        headers = {k: v.decode() for k, v in record.headers}
        assert headers[HEADER_REASON] == "delivery"
        assert f"output to {topics.scores} refused: MSG_SIZE_TOO_LARGE" in headers[HEADER_MESSAGE]
        assert record.value == values[key.encode()], "the input's bytes, for a replay"
    failures = metric_value(
        worker,
        "pixelwatch_delivery_failures_total",
        topic=topics.scores,
        reason="MSG_SIZE_TOO_LARGE",
    )
    assert failures == len(sent)
    assert metric_value(worker, "pixelwatch_dlq_total", reason="delivery") == len(sent)
    assert worker.alive()
    assert worker.stop() == 0


async def test_an_output_topic_deleted_mid_run_is_a_delivery_failure_and_stays_deleted(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    worker = start_worker(PIXELWATCH_DELIVERY_TIMEOUT="3")
    await produce(kafka_bootstrap, topics.images, images(5, "before"))
    await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(r[topics.scores]) >= 5, alive=worker.alive
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topics.scores])
        deadline = time.monotonic() + 30
        while topics.scores in await admin.list_topics():
            assert time.monotonic() < deadline, "the topic was not deleted"
            await asyncio.sleep(0.2)
        after = images(10, "after")
        await produce(kafka_bootstrap, topics.images, after)
        records = await consume_until(
            kafka_bootstrap, [topics.dlq], lambda r: len(r[topics.dlq]) >= len(after),
            alive=worker.alive,
        )  # fmt: skip
        assert topics.scores not in await admin.list_topics(), "the worker re-created it"
    finally:
        await admin.close()
    assert ids(records, topics.dlq) == Counter(k.decode() for k, _ in after)
    for record in records[topics.dlq]:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers[HEADER_REASON] == "delivery"
        assert headers[HEADER_MESSAGE].startswith(f"output to {topics.scores} refused: ")
    # The error is the broker's UNKNOWN_TOPIC_OR_PART, or librdkafka's timeout waiting for it.
    failures = metric_samples(worker, "pixelwatch_delivery_failures_total")
    assert sum(v for labels, v in failures if labels["topic"] == topics.scores) == len(after)
    assert worker.alive()
    assert worker.stop() == 0


async def test_a_dead_letter_the_broker_refuses_stops_the_worker_without_committing_it(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    await create_topic(kafka_bootstrap, topics.dlq, 1, **{"max.message.bytes": "100"})
    first = start_worker(PIXELWATCH_PARTITIONS="1")
    good = images(5)
    await produce(kafka_bootstrap, topics.images, good)
    await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(r[topics.scores]) >= 5, alive=first.alive
    )
    await produce(kafka_bootstrap, topics.images, [(b"bad", b"{not json")])  # offset 5

    deadline = time.monotonic() + 60
    while first.alive():
        assert time.monotonic() < deadline, "the worker kept running"
        await asyncio.sleep(0.2)
    assert first.process.returncode not in (0, None)
    errors = [line for line in first.output().splitlines() if "refused a record" in line]
    assert errors and f"dead-letter topic {topics.dlq} refused a record" in errors[0]
    [offset] = committed(kafka_bootstrap, topics.group, topics.images, 1)
    assert offset <= 5, "the refused dead letter's offset was committed"

    # Once the DLQ topic takes it, a restarted worker dead-letters the very same message.
    await alter_topic(kafka_bootstrap, topics.dlq, **{"max.message.bytes": "1048588"})
    second = start_worker(PIXELWATCH_PARTITIONS="1")
    records = await consume_until(
        kafka_bootstrap, [topics.dlq], lambda r: len(r[topics.dlq]) >= 1, alive=second.alive
    )
    assert [(r.key, r.value) for r in records[topics.dlq]] == [(b"bad", b"{not json")]
    assert second.stop() == 0


async def test_an_oversized_dead_letter_keeps_its_headers_and_a_truncation_marker(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    # The input topic takes 3 MB, the DLQ topic only its default (1 MB): the copy cannot fit.
    await create_topic(kafka_bootstrap, topics.images, 1, **{"max.message.bytes": "3000000"})
    worker = start_worker(PIXELWATCH_PARTITIONS="1")
    huge = b'{"pixels": "' + b"." * 2_000_000 + b'"}'
    await produce(kafka_bootstrap, topics.images, [(b"huge", huge), *images(2)])
    records = await consume_until(
        kafka_bootstrap,
        [topics.dlq, topics.scores],
        lambda r: len(r[topics.dlq]) >= 1 and len(r[topics.scores]) >= 2,
        alive=worker.alive,
    )
    [dead] = records[topics.dlq]
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers[HEADER_REASON] == "oversized" and dead.key == b"huge"
    marker = orjson.loads(dead.value)
    assert marker == {
        "pixelwatch_truncated": True,
        "size": len(huge),
        "sha256": hashlib.sha256(huge).hexdigest(),
    }
    assert worker.stop() == 0


async def test_a_worker_killed_mid_stream_loses_nothing_and_duplicates_are_counted(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    total = 20_000
    sent = images(total)
    sent[::101] = [(f"m{i}".encode(), b"broken") for i in range(0, total, 101)]
    first = start_worker(PIXELWATCH_BATCH_SIZE="200", PIXELWATCH_COMMIT_INTERVAL="0.2")
    await produce(kafka_bootstrap, topics.images, sent[: total // 2])
    await consume_until(
        kafka_bootstrap, [topics.scores, topics.dlq],
        lambda r: sum(ids(r, topics.scores, topics.dlq).values()) > total // 4, alive=first.alive,
    )  # fmt: skip
    first.stop(signal.SIGKILL)

    second = start_worker(PIXELWATCH_BATCH_SIZE="200")
    # The second half arrives after the kill, so the second worker has work however fast the
    # first one was (and is running, not starting, when it is stopped).
    await produce(kafka_bootstrap, topics.images, sent[total // 2 :])
    expected = {f"m{i}" for i in range(total)}
    records = await consume_until(
        kafka_bootstrap, [topics.scores, topics.dlq],
        lambda r: ids(r, topics.scores, topics.dlq).keys() >= expected,
        timeout=180, alive=second.alive,
    )  # fmt: skip
    seen = ids(records, topics.scores, topics.dlq)
    assert seen.keys() == expected, "every input is in scores or the DLQ"
    duplicates = sum(seen.values()) - len(seen)
    print(f"kill -9 mid-stream: {total} sent, 0 lost, {duplicates} duplicates")
    assert ids(records, topics.dlq).keys() == {f"m{i}" for i in range(0, total, 101)}
    assert second.stop() == 0


async def test_a_graceful_rebalance_and_stop_give_no_duplicates(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    total = 40_000
    # Small batches, a long commit interval and a steady stream: at every hand-over, batches
    # are in flight and uncommitted, so only draining and committing on revoke avoids
    # scoring them twice.
    knobs = {"PIXELWATCH_BATCH_SIZE": "50", "PIXELWATCH_COMMIT_INTERVAL": "30"}
    first = start_worker(**knobs)
    assert await wait_for_topic(kafka_bootstrap, topics.images, first.alive) == 4
    producing = asyncio.ensure_future(stream(kafka_bootstrap, topics.images, images(total), 5000))

    def scored(n: int) -> Callable[[Records], bool]:
        return lambda r: len(r[topics.scores]) >= n

    await consume_until(kafka_bootstrap, [topics.scores], scored(total // 8), alive=first.alive)
    second = start_worker(**knobs)  # the group rebalances: two partitions each
    await logged(second, "assigned")  # a slow broker may take seconds to finish the rebalance
    await consume_until(kafka_bootstrap, [topics.scores], scored(total // 2), alive=second.alive)
    assert first.stop(signal.SIGTERM) == 0  # mid-stream: its partitions move to the second
    await producing
    records = await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(ids(r, topics.scores)) >= total,
        timeout=180, alive=second.alive,
    )  # fmt: skip
    assert second.stop(signal.SIGTERM) == 0
    before = len(records[topics.scores])
    records = await consume_until(kafka_bootstrap, [topics.scores], scored(before))
    handovers = [line for line in second.output().splitlines() if "assigned" in line]
    assert len(handovers) >= 2, "the second worker never took over the first one's partitions"
    assert "revoked" in first.output(), "the first worker never gave a partition up"
    seen = ids(records, topics.scores)
    assert len(seen) == total
    duplicated = sorted(k for k, n in seen.items() if n > 1)
    assert duplicated == [], f"{len(duplicated)} images scored twice"


async def test_binary_and_batched_messages_are_answered_image_by_image(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    worker = start_worker()
    rng = np.random.default_rng(5)
    pixels = (rng.random((20, 64)) < 0.3).astype(np.uint8)
    u8 = bytes((pixels * 255).reshape(-1).tolist())
    bits = np.packbits(pixels, axis=1).tobytes()
    batch = {"images": [{"id": f"j{k}", "pixels": pixels[k].tolist()} for k in range(20)]}
    await produce(
        kafka_bootstrap,
        topics.images,
        [
            (b"json", orjson.dumps(batch)),
            (b"u8", u8, [(HEADER_FORMAT, b"u8"), (HEADER_ID, b"u8")]),
            (b"bits", bits, [(HEADER_FORMAT, b"bits")]),
        ],
    )
    records = await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(r[topics.scores]) >= 60, alive=worker.alive
    )
    scores = [orjson.loads(r.value) for r in records[topics.scores]]
    by_id = {s["id"]: s for s in scores}
    assert len(scores) == len(by_id) == 60
    assert {f"j{k}" for k in range(20)} | {f"u8:{k}" for k in range(20)} <= by_id.keys()
    groups: dict[str, list[float]] = {}
    for s in scores:
        groups.setdefault(str(s["source"]["index"]), []).append(s["similarity"])
    # The same 20 images thrice: each index has one similarity, whatever the encoding.
    assert sorted(groups) == sorted(str(k) for k in range(20))
    assert all(len(v) == 3 and len(set(v)) == 1 for v in groups.values()), groups
    assert worker.stop() == 0
