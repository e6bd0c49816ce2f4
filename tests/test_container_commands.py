"""The commands the compose containers run, run here against the real local broker.

No images can be built on these machines, so each service's process is derived from
docker-compose.yml and deploy/Dockerfile exactly as Docker would start it (the image's
ENTRYPOINT/CMD/ENV under the service's entrypoint/command/environment), and only what differs
between a container and this machine is mapped: container paths (/models, /opt/venv, the
sample images, the state dir) onto temporary directories and the repository, the host name
`kafka` onto the test broker, the metrics port onto a free one, and topic names and consumer
group onto fresh ones so tests never share data. The processes get the container's
environment only, not the test runner's.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from service.kafka.broker import LOG4J2_PROPERTIES, free_port, resolve_jars
from service.kafka.broker import default_cache_dir as broker_cache_dir
from service.schemas import ScoreMessage
from service.scoring.images import read_images
from service.scoring.model import load_model
from worker_harness import (
    REPO,
    ContainerCommand,
    WorkerTopics,
    consume_until,
    container_command,
    load_compose,
    map_text,
    parse_dockerfile,
    service_env,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SAMPLES: Final = REPO / "service" / "samples"
DEMO_COUNT: Final = 40  # the producer cycles the four test images ten times
# Kafka's docker image turns KAFKA_* variables into server.properties, except these.
KAFKA_ENV_EXCLUDES: Final = {
    "KAFKA_VERSION", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS",
    "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_LOG4J_ROOT_LOGLEVEL",
    "KAFKA_LOG4J_LOGGERS", "KAFKA_TOOLS_LOG4J_LOGLEVEL",
}  # fmt: skip


@dataclass(frozen=True)
class Machine:
    """Where the containers' paths live on this machine."""

    models: Path
    state: Path
    bootstrap: str

    @property
    def mapping(self) -> dict[str, str]:
        return {
            "/opt/venv": sys.prefix,  # the image's virtual environment: ours
            "/opt/pixelwatch/samples": str(SAMPLES),
            "/models": str(self.models),
            "/var/lib/pixelwatch": str(self.state),
            "/tmp/matplotlib": str(self.state / "matplotlib"),
            "kafka:9092": self.bootstrap,
        }

    @property
    def base_env(self) -> dict[str, str]:
        """The python base image's environment, as far as the commands need it. HOME is the
        images' user's: a directory that does not exist."""
        return {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "LANG": "C.UTF-8"}

    def command(self, compose: dict[str, Any], service: str, **env: str) -> ContainerCommand:
        spec = compose["services"][service]
        target = spec["build"]["target"]
        image = parse_dockerfile().image(target, self.base_env)
        command = container_command(spec, image, self.mapping)
        return ContainerCommand(command.argv, {**command.env, **env}, command.cwd)


def run(command: ContainerCommand, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command.argv,
        env=command.env,
        cwd=command.cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def machine(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Machine:
    root = tmp_path_factory.mktemp("container")
    for name in ("models", "state"):
        (root / name).mkdir()
    return Machine(root / "models", root / "state", kafka_bootstrap)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # The demo producer's defaults stream 100,000 images at 20/s; these are its knobs.
    return load_compose({"DEMO_COUNT": str(DEMO_COUNT), "DEMO_RATE": "0"})


@pytest.fixture(scope="module")
def first_training(machine: Machine, compose: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """The trainer service's command on an empty model volume (the real defaults: 800 epochs)."""
    return run(machine.command(compose, "trainer"))


def test_trainer_exports_the_model_into_the_model_volume(
    machine: Machine, first_training: subprocess.CompletedProcess[str]
) -> None:
    assert first_training.returncode == 0, first_training.stdout + first_training.stderr
    model = machine.models / "model.onnx"
    assert f"model      {model}" in first_training.stdout
    loaded = load_model(model)
    assert (loaded.metadata.threshold, loaded.metadata.metric) == (0.6, "hamming")


def test_trainer_skips_training_when_the_volume_has_a_model(
    machine: Machine, compose: dict[str, Any], first_training: subprocess.CompletedProcess[str]
) -> None:
    assert first_training.returncode == 0, "the first training failed; see its test"
    model = machine.models / "model.onnx"
    before = model.stat().st_mtime_ns
    again = run(machine.command(compose, "trainer"), timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"trainer: {model} exists, skipping training"  # mapped path
    assert model.stat().st_mtime_ns == before


@dataclass
class Container:
    """A long-running service command; its output goes to a log file."""

    command: ContainerCommand
    log: Path

    def __post_init__(self) -> None:
        self._out = self.log.open("wb")
        self.process = subprocess.Popen(
            self.command.argv,
            env=self.command.env,
            cwd=self.command.cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """What `docker compose stop` does: SIGTERM, then wait."""
        if self.alive():
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def worker(
    machine: Machine,
    compose: dict[str, Any],
    first_training: subprocess.CompletedProcess[str],
    tmp_path: Path,
) -> Iterator[tuple[Container, WorkerTopics]]:
    assert first_training.returncode == 0, "the trainer failed; see its test"
    topics = WorkerTopics()
    port = str(free_port())
    command = machine.command(compose, "worker", PIXELWATCH_METRICS_PORT=port, **topics.env())
    container = Container(command, tmp_path / "worker.log")
    yield container, topics
    container.stop(signal.SIGKILL)


def healthcheck(compose: dict[str, Any], worker: Container) -> subprocess.CompletedProcess[str]:
    """The worker service's healthcheck, run as Docker runs it: inside the worker's container."""
    test = compose["services"]["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    command = ContainerCommand(test[1:], worker.command.env, worker.command.cwd)
    return run(command, timeout=30)


def wait_healthy(compose: dict[str, Any], worker: Container, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (check := healthcheck(compose, worker)).returncode != 0:
        assert worker.alive(), f"the worker exited:\n{worker.output()[-3000:]}"
        assert time.monotonic() < deadline, f"never healthy: {check.stderr[-500:]}"
        time.sleep(1.0)


def test_worker_scores_what_the_demo_producer_sends(
    machine: Machine, compose: dict[str, Any], worker: tuple[Container, WorkerTopics]
) -> None:
    container, topics = worker
    wait_healthy(compose, container)

    producer = machine.command(compose, "producer", **topics.env())
    assert producer.argv[:2] == ["pixelwatch", "produce"]
    sent = run(producer, timeout=120)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert f"sent {DEMO_COUNT} images to {topics.images}" in sent.stdout

    records = asyncio.run(
        consume_until(
            machine.bootstrap,
            [topics.scores],
            lambda r: len(r[topics.scores]) >= DEMO_COUNT,
            alive=container.alive,
        )
    )
    scores = [ScoreMessage.model_validate_json(r.value) for r in records[topics.scores]]
    expected = load_model(machine.models / "model.onnx").score(
        read_images(SAMPLES / "seed_test.txt").pixels
    )
    assert 0 < expected.anomaly.sum() < len(expected.anomaly)  # both verdicts are exercised
    indices = sorted(int(s.id.rsplit("-", 1)[1]) for s in scores)
    assert indices == list(range(DEMO_COUNT))
    for score in scores:
        image = int(score.id.rsplit("-", 1)[1]) % len(expected.anomaly)
        assert score.anomaly == bool(expected.anomaly[image]), score.id

    assert healthcheck(compose, container).returncode == 0
    # The worker has its partitions and kept up: ready; its page is on (compose's default).
    base = f"http://127.0.0.1:{container.command.env['PIXELWATCH_METRICS_PORT']}"
    with urllib.request.urlopen(f"{base}/ready", timeout=10) as ready:
        assert orjson.loads(ready.read())["partitions"] == 4
    with urllib.request.urlopen(f"{base}/", timeout=10) as page:
        assert b"<title>pixelwatch" in page.read()
    assert container.stop() == 0, container.output()[-3000:]  # a clean `docker compose stop`


def test_worker_healthcheck_fails_when_the_worker_is_gone(
    compose: dict[str, Any], worker: tuple[Container, WorkerTopics]
) -> None:
    container, _ = worker
    wait_healthy(compose, container)
    container.stop(signal.SIGKILL)
    check = healthcheck(compose, container)
    assert check.returncode != 0
    assert "Connection refused" in check.stderr


# ---- the kafka service --------------------------------------------------------------------


def kafka_properties(env: dict[str, str]) -> dict[str, str]:
    """The image's rule: KAFKA_X_Y -> x.y, `__` -> `_`, `___` -> `-` (CLUSTER_ID is not one)."""
    properties = {}
    for key, value in env.items():
        if key.startswith("KAFKA_") and key not in KAFKA_ENV_EXCLUDES:
            name = key.removeprefix("KAFKA_")
            name = name.replace("___", "\0").replace("__", "\1").replace("_", ".")
            properties[name.replace("\0", "-").replace("\1", "_").lower()] = value
    return properties


@dataclass(frozen=True)
class ComposeKafka:
    """A real Kafka started from the kafka service's environment; its listeners' ports."""

    plaintext: int  # kafka:9092 for the containers
    host: int  # localhost:KAFKA_HOST_PORT for tools on the Docker host


async def serves(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        return bool((await admin.describe_cluster())["brokers"])
    except Exception:  # not up yet
        return False
    finally:
        await admin.close()


@pytest.fixture
def compose_kafka(tmp_path: Path) -> Iterator[ComposeKafka]:
    """The kafka service's settings, turned into server.properties as the official image does
    (KAFKA_* variables; storage formatted with CLUSTER_ID), run with the same Kafka version."""
    ports = {name: free_port() for name in ("PLAINTEXT", "CONTROLLER", "HOST")}
    compose = load_compose({"KAFKA_HOST_PORT": str(ports["HOST"])})
    env = service_env(compose["services"]["kafka"])
    mapping = {
        "kafka:9092": f"127.0.0.1:{ports['PLAINTEXT']}",
        "kafka:9093": f"127.0.0.1:{ports['CONTROLLER']}",
        "://:9092": f"://127.0.0.1:{ports['PLAINTEXT']}",
        "://:9093": f"://127.0.0.1:{ports['CONTROLLER']}",
        "://:9094": f"://127.0.0.1:{ports['HOST']}",
        "/var/lib/kafka/data": str(tmp_path / "data"),
    }
    properties = {k: map_text(v, mapping) for k, v in kafka_properties(env).items()}
    config = tmp_path / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    (tmp_path / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    libs = resolve_jars(broker_cache_dir())
    java = ["java", f"-Dlog4j2.configurationFile={tmp_path / 'log4j2.properties'}"]
    java += ["-cp", str(libs / "*")]
    storage = [*java, "kafka.tools.StorageTool", "format", "--config", str(config)]
    formatted = subprocess.run(
        [*storage, "--cluster-id", env["CLUSTER_ID"]], capture_output=True, text=True, check=False
    )
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr

    log = tmp_path / "kafka.log"
    with log.open("wb") as out:
        broker = subprocess.Popen(
            [*java, "-Xmx512m", "kafka.Kafka", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not asyncio.run(serves(f"localhost:{ports['HOST']}")):
            assert broker.poll() is None, f"Kafka exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"Kafka never served:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield ComposeKafka(plaintext=ports["PLAINTEXT"], host=ports["HOST"])
    finally:
        os.killpg(broker.pid, signal.SIGTERM)
        try:
            broker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(broker.pid, signal.SIGKILL)
            broker.wait()


async def test_kafka_service_environment_runs_a_single_node_kraft_broker(
    compose_kafka: ComposeKafka,
) -> None:
    # The HOST listener, as a tool on the Docker host reaches it (localhost:KAFKA_HOST_PORT).
    admin = AIOKafkaAdminClient(bootstrap_servers=f"localhost:{compose_kafka.host}")
    await admin.start()
    try:
        [node] = (await admin.describe_cluster())["brokers"]
        assert (node["host"], node["port"]) == ("localhost", compose_kafka.host)
        [described] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(node["node_id"]))]
        )
        values = {c[0]: c[1] for c in described.resources[0][4]}
        assert values["num.partitions"] == "4"  # PIXELWATCH_PARTITIONS' default
        assert values["process.roles"] == "broker,controller"
        assert values["auto.create.topics.enable"] == "false"  # the worker creates its own
        topic = f"compose-{uuid.uuid4().hex[:8]}"
        await admin.create_topics([NewTopic(topic, int(values["num.partitions"]), 1)])
    finally:
        await admin.close()
    # The PLAINTEXT listener, as the containers reach it (kafka:9092), round-trips a message.
    await round_trip(f"127.0.0.1:{compose_kafka.plaintext}", topic)


async def round_trip(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, orjson.dumps({"hello": "kafka"}))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
        assert orjson.loads(record.value) == {"hello": "kafka"}
        assert len(consumer.assignment()) == 4
    finally:
        await consumer.stop()
