"""The local Kafka broker: real round trips, the `pixelwatch broker` command and its errors."""

import argparse
import asyncio
import fcntl
import hashlib
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from confluent_kafka import Producer

from service.cli import broker as broker_module
from service.config import Settings
from service.kafka.broker import (
    KAFKA_VERSION,
    BrokerError,
    LocalBroker,
    _signals_held,
    free_port,
    pom_bytes,
    resolve_jars,
)
from worker_harness import broker_command_until_ready

REPO = Path(__file__).resolve().parents[1]


def parse_broker_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    broker_module.configure_parser(parser)
    return parser.parse_args(argv)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.kafka
async def test_messages_round_trip_through_every_partition_of_a_new_topic(
    kafka_bootstrap: str, topic_factory: Callable[[int], Awaitable[str]]
) -> None:
    topic = await topic_factory(3)
    sent = {(p, f"message {i} to {p}".encode()) for p in range(3) for i in range(5)}

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for partition, value in sorted(sent):
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    received: set[tuple[int, bytes]] = set()
    try:
        async with asyncio.timeout(60):
            async for record in consumer:
                received.add((record.partition, record.value))
                if len(received) == len(sent):
                    break
    finally:
        await consumer.stop()
    assert received == sent


@pytest.mark.kafka
async def test_a_topic_is_never_created_by_a_client_that_merely_names_it(
    kafka_bootstrap: str,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")])
        values = {c[0]: c[1] for c in described.resources[0][4]}
        # Topics created without a partition count get the worker's default.
        assert values["num.partitions"] == str(Settings().partitions)
        # librdkafka producers ask for auto-creation unless told not to; the broker refuses.
        missing = f"missing-{uuid.uuid4().hex[:8]}"
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 3000})
        errors: list[str] = []
        producer.produce(
            missing, b"x", on_delivery=lambda e, m: errors.append(e.name() if e else "ok")
        )
        producer.flush(20)
        assert errors and errors[0] in {"UNKNOWN_TOPIC_OR_PART", "_MSG_TIMED_OUT"}, errors
        assert missing not in await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.kafka
async def test_a_killed_broker_restarts_on_its_data_dir_and_port(tmp_path: Path) -> None:
    broker = LocalBroker(port=free_port(), data_dir=tmp_path / "data")
    with broker:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("kept", num_partitions=2, replication_factor=1)])
        await admin.close()
        broker.kill()
        assert not broker.running and port_is_free(broker.port)
        broker.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            assert "kept" in await admin.list_topics()
        finally:
            await admin.close()


@pytest.mark.kafka
async def test_broker_keeps_topics_when_restarted_on_the_same_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with LocalBroker(port=free_port(), data_dir=data_dir) as first:
        admin = AIOKafkaAdminClient(bootstrap_servers=first.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("kept", num_partitions=2, replication_factor=1)])
        await admin.close()
    assert data_dir.is_dir(), "a data dir given by the caller must survive stop()"

    with LocalBroker(port=free_port(), data_dir=data_dir) as second:
        admin = AIOKafkaAdminClient(bootstrap_servers=second.bootstrap)
        await admin.start()
        topics = await admin.list_topics()
        await admin.close()
    assert "kept" in topics


@pytest.mark.kafka
def test_second_broker_on_a_data_dir_in_use_is_refused(kafka_broker: LocalBroker) -> None:
    with pytest.raises(BrokerError, match="in use by another Kafka broker"):
        LocalBroker(port=free_port(), data_dir=kafka_broker.data_dir).start()
    assert kafka_broker.running


@pytest.mark.kafka
async def test_broker_command_reports_ready_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "broker", "--port", str(port)]
    command += ["--data-dir", str(tmp_path / "data")]

    def listening() -> None:
        assert not port_is_free(port)

    code, stderr = await broker_command_until_ready(command, port, REPO, while_ready=listening)
    assert code == 0, stderr.decode()
    assert port_is_free(port), "the Kafka process outlived `pixelwatch broker`"


@pytest.mark.kafka
async def test_broker_command_stopped_while_starting_leaves_no_kafka_behind(
    tmp_path: Path,
) -> None:
    port, data = free_port(), tmp_path / "data"
    command = [sys.executable, "-m", "service.cli", "broker", "--port", str(port)]
    command += ["--data-dir", str(data)]
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(240):
            while not (data / "broker.log").exists():  # the JVM has just been launched
                assert proc.returncode is None
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"ready" not in stdout, "the broker was ready before the signal: nothing was tested"
    assert proc.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr
    # The JVM inherits the data dir's lock: if it still ran, the lock would be taken.
    with (data / ".pixelwatch.lock").open("wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert port_is_free(port)


def test_broker_command_refuses_a_port_out_of_range_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = broker_module.run(parse_broker_args("--port", "70000", "--data-dir", str(tmp_path)))
    assert code == 2
    assert capsys.readouterr().err == "error: --port 70000 is not a TCP port (1-65535)\n"


@pytest.mark.kafka
def test_broker_command_reports_a_taken_port_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = parse_broker_args("--port", str(port), "--data-dir", str(tmp_path))
        code = broker_module.run(args)

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"port {port}" in err and "already in use" in err


def test_broker_without_java_on_path_names_the_prerequisites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty dir: no java, no mvn

    with pytest.raises(BrokerError, match="java") as caught:
        LocalBroker(port=free_port(), data_dir=tmp_path / "data").start()

    message = str(caught.value)
    assert "Java 17+" in message and "Maven" in message
    assert "apt-get install openjdk-17-jre-headless maven" in message
    assert "\n" not in message


def test_a_signal_during_the_spawn_waits_until_the_child_is_known_and_the_child_can_get_it() -> (
    None
):
    """The JVM is spawned with SIGTERM held back: a handler that raises must not run inside
    Popen (the child would be orphaned), and the child must not inherit the held mask."""
    seen: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append("handler"))
    try:
        with _signals_held() as unmask:
            signal.raise_signal(signal.SIGTERM)
            seen.append("held")
            child = subprocess.Popen(["sleep", "30"], preexec_fn=unmask)
        seen.append("after")
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        status = Path(f"/proc/{child.pid}/status").read_text()
        blocked = int(
            next(line for line in status.splitlines() if line.startswith("SigBlk:"))[7:], 16
        )
        assert not blocked & (1 << (signal.SIGTERM - 1)), "the child inherited a held SIGTERM"
    finally:
        child.kill()
        child.wait()
    assert seen == ["held", "handler", "after"]


@pytest.mark.kafka
def test_jars_resolve_into_an_empty_cache_from_a_directory_outside_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the pom is package data: nothing is found through the cwd
    cache = tmp_path / "cache"
    libs = resolve_jars(cache)
    assert libs == cache / f"kafka-{KAFKA_VERSION}" / "libs"
    # The marker records the pom it was resolved from, so a pom change re-resolves.
    assert (libs / ".complete").read_text().strip() == hashlib.sha256(pom_bytes()).hexdigest()
    jars = {p.name for p in libs.glob("*.jar")}
    assert (
        f"kafka_2.13-{KAFKA_VERSION}.jar" in jars and f"kafka-clients-{KAFKA_VERSION}.jar" in jars
    )
    # Neither the staging dir nor Maven's copy of the pom is left beside the jars.
    assert sorted(p.name for p in libs.parent.iterdir()) == ["libs"]
    assert resolve_jars(cache) == libs  # and the second call finds them
