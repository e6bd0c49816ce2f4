"""PIXELWATCH_PROCESSING_GUARANTEE=exactly_once on the real broker: outputs, dead letters and
offsets commit in one transaction, so a read_committed reader sees every input answered
exactly once, whether the worker stops, is killed with kill -9 or is fenced."""

import asyncio
import signal
import time
from collections import Counter

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from conftest import StartWorker
from kafka_messages import kafka_message
from service.config import Settings
from service.dataplane.decode import WHOLE
from service.dataplane.pipeline import BatchResult, Reason
from service.dataplane.transactions import TransactionFatal, Transactions
from service.errors import PixelwatchError
from service.schemas import HEADER_REASON
from test_delivery import create_topic, ids, images, logged
from worker_harness import WorkerTopics, consume_until, metric_samples, produce

EXACTLY_ONCE = {"PIXELWATCH_PROCESSING_GUARANTEE": "exactly_once"}


# ---- settings ----


def test_the_transactional_id_is_stable_per_instance_and_absent_without_one() -> None:
    pinned = Settings(processing_guarantee="exactly_once", group_id="g", group_instance_id="w-1")
    assert pinned.transactional_id == "pixelwatch-g-w-1"
    assert Settings(processing_guarantee="exactly_once").transactional_id is None
    assert Settings().processing_guarantee == "at_least_once"


def test_a_transaction_that_could_outlive_the_brokers_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"transaction\.max\.timeout\.ms"):
        Settings(processing_guarantee="exactly_once", delivery_timeout=900.0)
    Settings(processing_guarantee="at_least_once", delivery_timeout=900.0)  # no transactions


def test_an_unknown_guarantee_is_refused() -> None:
    from service.config import load_settings

    with pytest.raises(PixelwatchError, match="PROCESSING_GUARANTEE"):
        load_settings(processing_guarantee="exactly-once")


# ---- on the broker ----


def committed_view(bootstrap: str, topic: str, isolation: str) -> Counter[str]:
    """Every key in `topic` up to where a reader with `isolation` may read (for
    read_committed: the last stable offset, before any open transaction)."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "isolation.level": isolation,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        reader.assign([TopicPartition(topic, p, -2) for p in partitions])
        ended: set[int] = set()
        keys: Counter[str] = Counter()
        deadline = time.monotonic() + 30
        while len(ended) < len(partitions):
            assert time.monotonic() < deadline, "the reader never reached the end"
            for message in reader.consume(500, 0.5):
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    ended.add(int(message.partition() or 0))
                elif error is None:
                    keys[(message.key() or b"").decode()] += 1
        return keys
    finally:
        reader.close()


kafka = pytest.mark.kafka


@kafka
async def test_outputs_are_visible_to_read_committed_readers_only_once_their_transaction_commits(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    knobs = {**EXACTLY_ONCE, "PIXELWATCH_GROUP_INSTANCE_ID": "w-1"}
    # The first batch commits at once; the next transaction stays open for 60 s.
    first = start_worker(PIXELWATCH_COMMIT_INTERVAL="60", PIXELWATCH_PARTITIONS="2", **knobs)
    await produce(kafka_bootstrap, topics.images, images(1, "first"))
    await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(r[topics.scores]) >= 1, alive=first.alive
    )
    held = images(20, "held")
    await produce(kafka_bootstrap, topics.images, held)
    # The outputs are in the log (a read_uncommitted reader sees them) ...
    await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(r[topics.scores]) >= 21,
        alive=first.alive, isolation_level="read_uncommitted",
    )  # fmt: skip
    # ... but not in what read_committed readers get: their transaction is open.
    assert committed_view(kafka_bootstrap, topics.scores, "read_committed") == Counter(["first0"])
    # The page and the metrics see what such readers see: the held batches are not counted.
    counted = metric_samples(first, "pixelwatch_images_total")
    assert sum(v for labels, v in counted if labels["outcome"] in ("normal", "anomaly")) == 1

    # kill -9 with the transaction open; the replacement (same instance, same transactional.id)
    # fences it, the broker aborts it, and the replacement answers those inputs once.
    first.stop(signal.SIGKILL)
    second = start_worker(PIXELWATCH_PARTITIONS="2", **knobs)
    expected = {"first0"} | {k.decode() for k, _ in held}
    records = await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: ids(r, topics.scores).keys() >= expected,
        timeout=120, alive=second.alive,
    )  # fmt: skip
    assert second.stop() == 0
    assert committed_view(kafka_bootstrap, topics.scores, "read_committed") == Counter(expected)
    assert ids(records, topics.scores) == Counter(expected)
    # The aborted transaction's records are in the log all the same: read_uncommitted
    # readers see them twice, which is why our readers use read_committed.
    uncommitted = committed_view(kafka_bootstrap, topics.scores, "read_uncommitted")
    assert uncommitted == Counter({"first0": 1} | {k.decode(): 2 for k, _ in held})


@kafka
async def test_a_worker_killed_mid_stream_in_exactly_once_gives_no_loss_and_no_duplicates(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    total = 10_000
    sent = images(total)
    sent[::101] = [(f"m{i}".encode(), b"broken") for i in range(0, total, 101)]
    knobs = {**EXACTLY_ONCE, "PIXELWATCH_GROUP_INSTANCE_ID": "w-1", "PIXELWATCH_BATCH_SIZE": "200"}
    first = start_worker(PIXELWATCH_COMMIT_INTERVAL="0.5", **knobs)
    await produce(kafka_bootstrap, topics.images, sent[: total // 2])
    await consume_until(
        kafka_bootstrap, [topics.scores, topics.dlq],
        lambda r: sum(ids(r, topics.scores, topics.dlq).values()) > total // 4,
        alive=first.alive,
    )  # fmt: skip
    first.stop(signal.SIGKILL)

    second = start_worker(**knobs)
    await produce(kafka_bootstrap, topics.images, sent[total // 2 :])
    expected = {f"m{i}" for i in range(total)}
    records = await consume_until(
        kafka_bootstrap, [topics.scores, topics.dlq],
        lambda r: ids(r, topics.scores, topics.dlq).keys() >= expected,
        timeout=180, alive=second.alive,
    )  # fmt: skip
    assert second.stop() == 0
    records = await consume_until(
        kafka_bootstrap,
        [topics.scores, topics.dlq],
        lambda r: sum(len(v) for v in r.values()) >= sum(len(v) for v in records.values()),
    )  # read again after the stop: a late duplicate would be counted too
    seen = ids(records, topics.scores, topics.dlq)
    duplicated = sorted(k for k, n in seen.items() if n > 1)
    print(f"exactly_once kill -9 mid-stream: {total} sent, {len(duplicated)} duplicated")
    assert seen.keys() == expected, "every input is in scores or the DLQ"
    assert duplicated == [], f"{len(duplicated)} inputs answered twice"
    assert ids(records, topics.dlq).keys() == {f"m{i}" for i in range(0, total, 101)}


@kafka
async def test_an_output_the_broker_refuses_aborts_and_its_input_is_dead_lettered_once(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    await create_topic(kafka_bootstrap, topics.scores, 2, **{"max.message.bytes": "100"})
    worker = start_worker(PIXELWATCH_PARTITIONS="2", **EXACTLY_ONCE)
    sent = images(30)
    await produce(kafka_bootstrap, topics.images, sent)
    records = await consume_until(
        kafka_bootstrap, [topics.dlq], lambda r: len(r[topics.dlq]) >= len(sent),
        alive=worker.alive,
    )  # fmt: skip
    await logged(worker, "transaction aborted")
    assert worker.stop() == 0
    dead = committed_view(kafka_bootstrap, topics.dlq, "read_committed")
    assert dead == Counter(k.decode() for k, _ in sent)
    assert committed_view(kafka_bootstrap, topics.scores, "read_committed") == Counter()
    reasons = {dict(r.headers)[HEADER_REASON] for r in records[topics.dlq]}
    assert reasons == {b"delivery"}


@kafka
async def test_a_fenced_worker_stops_with_one_line_and_commits_nothing_more(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    knobs = {**EXACTLY_ONCE, "PIXELWATCH_GROUP_INSTANCE_ID": "w-1"}
    first = start_worker(PIXELWATCH_COMMIT_INTERVAL="0.3", **knobs)
    await produce(kafka_bootstrap, topics.images, images(500, "before"))
    await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(r[topics.scores]) >= 500, alive=first.alive
    )
    # A second producer with the worker's transactional.id: a newer instance of it.
    usurper = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"pixelwatch-{topics.group}-w-1"}
    )
    usurper.init_transactions(30)
    streaming = asyncio.ensure_future(produce(kafka_bootstrap, topics.images, images(500, "after")))
    deadline = time.monotonic() + 60
    while first.alive():
        assert time.monotonic() < deadline, "the fenced worker kept running"
        await asyncio.sleep(0.2)
    await streaming
    assert first.process.returncode not in (0, None)
    lines = first.output().splitlines()
    fenced = [line for line in lines if "data plane stopped: ProducerFenced" in line]
    assert len(fenced) == 1, "\n".join(fenced)
    assert f"transactional.id pixelwatch-{topics.group}-w-1" in fenced[0]

    # Whatever it had in its open transaction is not visible; its replacement answers it.
    second = start_worker(**knobs)
    expected = {f"before{i}" for i in range(500)} | {f"after{i}" for i in range(500)}
    await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: ids(r, topics.scores).keys() >= expected,
        timeout=120, alive=second.alive,
    )  # fmt: skip
    assert second.stop() == 0
    assert committed_view(kafka_bootstrap, topics.scores, "read_committed") == Counter(expected)


@kafka
async def test_dlq_replay_leaves_out_the_dead_letters_of_aborted_transactions(
    kafka_bootstrap: str, topics: WorkerTopics
) -> None:
    from test_dlq_replay import replay

    await create_topic(kafka_bootstrap, topics.dlq, 1)
    await create_topic(kafka_bootstrap, topics.images, 1)
    writer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": topics.run})
    writer.init_transactions(30)
    for key, commit in ((b"aborted", False), (b"committed", True)):
        writer.begin_transaction()
        writer.produce(topics.dlq, b"{not json", key, headers=[(HEADER_REASON, b"schema")])
        writer.flush(30)
        (writer.commit_transaction if commit else writer.abort_transaction)(30)

    done = replay(kafka_bootstrap, topics.env())

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"replayed 1 of 1 dead letters from {topics.dlq}"), done.stdout
    records = await consume_until(
        kafka_bootstrap, [topics.images], lambda r: len(r[topics.images]) >= 1
    )
    assert [r.key for r in records[topics.images]] == [b"committed"]


# ---- the transaction logic, with a stand-in producer ----


class ScriptedProducer:
    """Raises the scripted errors, one per call, for the transactional calls it is given."""

    def __init__(self, **errors: list[KafkaError]) -> None:
        self.errors = errors
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        queue = self.errors.get(name, [])
        if queue:
            raise KafkaException(queue.pop(0))

    def init_transactions(self, timeout: float) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def send_offsets_to_transaction(self, offsets: object, group: object, timeout: float) -> None:
        self._call("send_offsets_to_transaction")

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort_transaction")


def transactions(producer: ScriptedProducer) -> Transactions:
    return Transactions(producer, "pixelwatch-g-w-1", timeout=5.0)  # type: ignore[arg-type]


def test_a_commit_that_times_out_is_retried_and_then_commits() -> None:
    producer = ScriptedProducer(
        commit_transaction=[KafkaError(KafkaError._TIMED_OUT, "slow", retriable=True)]
    )
    txn = transactions(producer)
    txn.begin()
    assert txn.commit([TopicPartition("images", 0, 10)], object()) is True
    assert producer.calls == [
        "begin_transaction", "send_offsets_to_transaction", "commit_transaction",
        "commit_transaction",
    ]  # fmt: skip
    assert not txn.open


def test_an_abortable_commit_returns_false_and_says_why() -> None:
    abortable = KafkaError(KafkaError.INVALID_TXN_STATE, "refused", txn_requires_abort=True)
    producer = ScriptedProducer(commit_transaction=[abortable])
    txn = transactions(producer)
    txn.begin()
    assert txn.commit([TopicPartition("images", 0, 10)], object()) is False
    assert txn.doomed is not None and "INVALID_TXN_STATE" in txn.doomed
    txn.abort()
    assert producer.calls[-1] == "abort_transaction" and not txn.open and txn.doomed is None


def test_a_fenced_producer_raises_the_one_line_that_names_its_transactional_id() -> None:
    fenced = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    txn = transactions(ScriptedProducer(commit_transaction=[fenced]))
    txn.begin()
    with pytest.raises(TransactionFatal) as raised:
        txn.commit([], object())
    line = str(raised.value)
    assert line.startswith(
        "ProducerFenced: another producer took transactional.id pixelwatch-g-w-1"
    )
    assert "\n" not in line


def test_a_report_after_an_abort_dooms_no_later_transaction() -> None:
    txn = transactions(ScriptedProducer())
    txn.doom("late report")
    assert txn.doomed is None
    txn.begin()
    txn.doom("refused")
    assert txn.doomed == "refused"


def test_a_retry_dead_letters_the_whole_input_of_a_refused_output_and_keeps_the_others() -> None:
    refused, fine = kafka_message(b"{}", 7, partition=1), kafka_message(b"{}", 8, partition=1)

    def output(message: Message) -> tuple[bytes, bytes]:
        source = {"partition": message.partition(), "offset": message.offset(), "index": 0}
        return b"k", orjson.dumps({"source": source})

    result = BatchResult([refused, fine], scores=[output(refused), output(fine)])
    result.anomalies = [output(refused)]
    # Which input each output was made from, by position in the batch.
    result.score_origins, result.anomaly_origins = [0, 1], [0]
    txn = transactions(ScriptedProducer())
    txn.refused_output((1, 7), "output to scores refused: MSG_SIZE_TOO_LARGE")
    txn.redirect(result)

    assert result.scores == [output(fine)] and result.anomalies == []
    [letter] = result.dead
    assert (letter.message, letter.index, letter.reason) == (refused, WHOLE, Reason.DELIVERY)
    assert letter.text == "output to scores refused: MSG_SIZE_TOO_LARGE"
    # Once a commit covers the input, the retry's plan is done with.
    txn.begin()
    txn.commit([TopicPartition("images", 1, 9)], object())
    assert txn.redirects.dead == {}


def test_a_transactional_call_that_hangs_past_its_timeout_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from service.dataplane import transactions as module

    monkeypatch.setattr(module, "HUNG_GRACE", 0.2)
    release = threading.Event()

    class Hung(ScriptedProducer):
        def send_offsets_to_transaction(self, offsets: object, group: object, t: float) -> None:
            release.wait(30)  # as librdkafka's does when the group coordinator went away

    hung = Hung()
    txn = transactions(hung)
    txn.timeout = 0.5
    txn.begin()
    try:
        with pytest.raises(TransactionFatal, match="send_offsets_to_transaction did not return"):
            txn.commit([TopicPartition("images", 0, 1)], object())
    finally:
        release.set()


def test_a_fatal_error_reported_only_by_its_code_stops_the_data_plane() -> None:
    # librdkafka hands a static member fenced by its group to the error callback as code
    # _FATAL without the fatal flag; a worker that took it for a warning would idle forever.
    from service.dataplane.loop import DataPlane

    plane = DataPlane(Settings(), scorer=None)  # type: ignore[arg-type]
    plane._client_error(KafkaError(KafkaError._FATAL, "Static consumer fenced"))
    with pytest.raises(PixelwatchError, match="_FATAL"):
        plane._raise_fatal()
