"""`make bench`: the worker against the Kafka client's own limit, side by side on one broker.

Every contender consumes the same pre-produced input (N image messages over P partitions,
a fixed share anomalous) in its own process and consumer group. Throughput is outputs per
second between the first and the last output appearing in the contender's output topic
(start-up and group joining are excluded for everyone alike). Ratios, not absolute rates,
are the result: they hold across machines. The data path's own cost per message is measured
in-process (own_cost.py) against plain JSON decoding and encoding of the same messages.

    PYTHONPATH=tests python -m benchmarks.bench [--messages 400000] [--out bench-results/bench.json]

A subset, to compare two contenders within one run (`--only`, or BENCH_ONLY), written to
bench-results/bench-only.json unless --out says otherwise:

    PYTHONPATH=tests python -m benchmarks.bench --only worker,worker_exactly_once

Every contender's row says what it consumed: the load mix, the image size and the share of
images its model flags. A contender whose outputs all arrive within `min_seconds` is reported
as too short to time, without a rate, and the ratios it takes part in are null.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import Producer
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from benchmarks.own_cost import cost_by_size, own_cost
from benchmarks.sizes import ARCHITECTURES, SIZES, ensure_sized_model, sized_images
from jaeger_harness import Jaeger
from model_export.digits.memory_cost import CostPoint, markdown, measure_memory_cost
from service.cli.produce import encode, encode_messages
from service.config import Settings
from service.errors import ModelError
from service.kafka.broker import KAFKA_VERSION, LocalBroker, free_port
from service.samples import SEED_TRAIN
from service.scoring.images import read_images
from service.scoring.model import Model, load_model

ROOT = Path(__file__).resolve().parents[2]
console = Console(stderr=True, highlight=False)


@dataclass
class Config:
    messages: int = 400_000  # 200,000 pass through in about a second on a quiet machine
    partitions: int = 4
    anomalous_share: float = 0.05
    faust_messages: int = 20_000
    images_per_message: int = 50
    cost_batches: int = 40  # batches of 500 for the in-process shadow cost
    memory_sizes: tuple[int, ...] = (1, 64, 256, 1024, 4096, 16384)
    latency_seconds: float = 20.0
    # PIXELWATCH_COMMIT_INTERVAL values for the throughput/latency trade-off, in both modes.
    commit_intervals: tuple[float, ...] = (0.2, 1.0, 5.0)
    model: Path = ROOT / "artifacts" / "bench" / "seed.onnx"
    workdir: Path = ROOT / "bench-results" / "work"
    # The shadow candidate; None: trained (800 epochs, seed 1) into workdir/candidate.onnx.
    candidate: Path | None = None
    tuned: dict[str, str] = field(
        default_factory=lambda: {"PIXELWATCH_BATCH_SIZE": "2000", "PIXELWATCH_BATCH_WINDOW": "0.1"}
    )
    timeout: float = 600.0
    # Shorter runs than this are reported as too short to time, not as a rate.
    min_seconds: float = 1.0
    # Bigger images, binary u8, one image a message: per size, the messages the passthrough
    # moves and (a prefix of them, timed the same way) the images each worker scores.
    sized_messages: tuple[tuple[int, int, int], ...] = ((28, 200_000, 40_000), (64, 60_000, 8_000))
    sized_epochs: int = 5
    # The contenders and sections to run (CONTENDERS, SECTIONS); None: all of them.
    only: frozenset[str] | None = None


TOO_SHORT = "too short to time"


@dataclass
class Load:
    """What a contender consumed."""

    mix: str  # e.g. "95% normal, 5% noise"
    image_size: str  # e.g. "8x8"
    pixels: int  # per image
    anomaly_share: float  # of the images, as the contender's model (or the size's) flags them
    bytes_per_image: float  # mean input bytes (message value) per image


@dataclass
class Throughput:
    name: str
    messages: int  # outputs waited for; images when the rate is in images
    seconds: float
    per_second: float | None  # None: too short to time
    peak_rss_mb: float | None = None
    load: str = ""
    image_size: str = ""
    anomaly_share: float | None = None
    images_per_second: float | None = None
    pixels_per_second: float | None = None
    mb_per_second: float | None = None
    note: str = ""

    def describe(self, load: Load, images: int | None = None) -> "Throughput":
        """Fill in the load and the rates in images, pixels and MB (of input) a second;
        `images`: how many images the timed outputs stand for (default: one each)."""
        self.load, self.image_size, self.anomaly_share = (
            load.mix, load.image_size, load.anomaly_share,
        )  # fmt: skip
        if self.per_second is None:
            return self
        per_image = (self.messages if images is None else images) / self.seconds
        self.images_per_second = per_image
        self.pixels_per_second = per_image * load.pixels
        self.mb_per_second = per_image * load.bytes_per_image / 1e6
        return self


def timed(name: str, count: int, seconds: float, min_seconds: float) -> Throughput:
    """`count` outputs in `seconds`, or too short to time under `min_seconds`."""
    if seconds < min_seconds:
        return Throughput(name, count, seconds, None, note=TOO_SHORT)
    return Throughput(name, count, seconds, count / seconds)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either was not run or was too short to time."""
    return None if a is None or b is None or b == 0 else a / b


def mix(share: float) -> str:
    return f"{100 - 100 * share:g}% normal, {100 * share:g}% noise"


@dataclass
class Contender:
    """One contender process and the log it writes, quoted when it dies early."""

    process: subprocess.Popen[bytes]
    log: Path

    def check_running(self) -> None:
        if self.process.poll() is None:
            return
        tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(
            f"contender exited with {self.process.returncode} (log {self.log}):\n" + "\n".join(tail)
        )


def make_images(count: int, share: float, seed: int = 0) -> np.ndarray:
    """Normal images (the course's two, with a flipped pixel or none) and random-noise anomalies."""
    rng = np.random.default_rng(seed)
    normal = read_images(SEED_TRAIN).pixels
    images = normal[rng.integers(0, len(normal), count)].copy()
    flips = rng.integers(0, images.shape[1], count)
    images[np.arange(count), flips] = 1.0 - images[np.arange(count), flips]
    anomalous = rng.random(count) < share
    images[anomalous] = (rng.random((int(anomalous.sum()), images.shape[1])) < 0.5).astype(
        np.float32
    )
    return images.astype(np.float32)


async def create_topics(
    bootstrap: str, names: list[str], partitions: int, config: dict[str, str] | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1, topic_configs=config) for n in names])
    finally:
        await admin.close()


async def produce_images(
    bootstrap: str,
    topic: str,
    images: np.ndarray,
    prefix: str,
    rate: float = 0.0,
    fmt: str = "json",
    per_message: int = 1,
    traced: bool = False,
) -> int:
    """Produces `images` to `topic`; returns the bytes of the message values. `traced`: every
    message carries a W3C traceparent of its own (a new trace each)."""
    rng = random.Random(0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=262_144)
    await producer.start()
    pending = []
    size = 0
    started = time.monotonic()
    try:
        for i in range(0, len(images), per_message):
            if rate > 0:
                ahead = started + i / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            now = int(time.time() * 1000)
            if fmt == "json" and per_message == 1:
                ident = f"{prefix}{i}"
                key, value, headers = ident.encode(), encode(images[i], ident, now), None
            else:
                ids = [f"{prefix}{k}" for k in range(i, min(i + per_message, len(images)))]
                key, value, headers = encode_messages(images[i : i + per_message], ids, now, fmt)
            if traced:
                trace, span = rng.getrandbits(128) or 1, rng.getrandbits(64) or 1
                parent = f"00-{trace:032x}-{span:016x}-01".encode()
                headers = [*(headers or []), ("traceparent", parent)]
            size += len(value)
            pending.append(await producer.send(topic, value=value, key=key, headers=headers))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return size


async def topic_partitions(bootstrap: str, topic: str, wait: float) -> list[TopicPartition]:
    """The topic's partitions, once it exists (workers create their output topics)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + wait
        while topic not in await admin.list_topics():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} was not created within {wait:.0f}s")
            await asyncio.sleep(0.1)
        [description] = await admin.describe_topics([topic])
        return [TopicPartition(topic, p["partition"]) for p in description["partitions"]]
    finally:
        await admin.close()


async def wait_for_outputs(
    bootstrap: str, topic: str, expected: int, contenders: list[Contender], wait: float
) -> tuple[float, float, int]:
    """Poll the output topic's end offsets until `expected`.

    Returns (time of the last poll that saw no output, time all were there, 0): the run is
    timed from just before its first output, so start-up and group joining are left out and a
    run that completes between two polls still gets a non-zero duration.
    """
    partitions = await topic_partitions(bootstrap, topic, wait)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        deadline = time.monotonic() + wait
        last_empty = time.monotonic()
        while True:
            now = time.monotonic()
            for contender in contenders:
                contender.check_running()
            if now > deadline:
                raise TimeoutError(f"{topic}: outputs did not reach {expected} in {wait:.0f}s")
            count = sum((await consumer.end_offsets(partitions)).values())
            if count == 0:
                last_empty = now
            elif count >= expected:
                done = time.monotonic()
                for contender in contenders:  # every worker of a scaled-out run lasted
                    contender.check_running()
                return last_empty, done, 0
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stop(contender: Contender) -> None:
    process = contender.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def spawn(argv: list[str], env: dict[str, str], log: Path) -> Contender:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        process = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT
        )
    return Contender(process, log)


def contender_argv(
    name: str, bootstrap: str, source: str, sink: str, group: str, datadir: Path
) -> list[str]:
    script = str(Path(__file__).with_name("contenders.py"))
    return [
        sys.executable, script, name, "--bootstrap", bootstrap, "--input", source,
        "--output", sink, "--group", group, "--datadir", str(datadir),
    ]  # fmt: skip


def worker_env(
    bootstrap: str, cfg: Config, run: str, source: str, extra: dict[str, str]
) -> dict[str, str]:
    return {
        "PYTHONPATH": str(ROOT),
        "PIXELWATCH_BOOTSTRAP": bootstrap,
        "PIXELWATCH_MODEL": str(cfg.model),
        "PIXELWATCH_INPUT_TOPIC": source,
        "PIXELWATCH_SCORES_TOPIC": f"scores-{run}",
        "PIXELWATCH_ANOMALIES_TOPIC": f"anomalies-{run}",
        "PIXELWATCH_DLQ_TOPIC": f"dlq-{run}",
        "PIXELWATCH_GROUP_ID": f"bench-{run}",
        "PIXELWATCH_PARTITIONS": str(cfg.partitions),
        # Default settings include the metrics endpoint and faust's per-event sensor.
        "PIXELWATCH_METRICS_PORT": str(free_port()),
        "PIXELWATCH_DATA_DIR": str(cfg.workdir / run / uuid.uuid4().hex[:8]),
        "PIXELWATCH_LOG_LEVEL": "WARNING",
        **extra,
    }


async def measure(
    name: str,
    processes: list[Contender],
    bootstrap: str,
    sink: str,
    expected: int,
    wait: float,
    min_seconds: float = 1.0,
) -> Throughput:
    try:
        first, last, first_count = await wait_for_outputs(
            bootstrap, sink, expected, processes, wait
        )
        rss = max((peak_rss_mb(p.process.pid) or 0.0) for p in processes)
    finally:
        for p in processes:
            stop(p)
    result = timed(name, expected - first_count, max(last - first, 1e-3), min_seconds)
    result.peak_rss_mb = rss
    rate = TOO_SHORT if result.per_second is None else f"{result.per_second:,.0f}/s"
    console.print(
        f"  {name}: {expected} outputs in {result.seconds:.2f} s, {rate}, peak RSS {rss:.0f} MB"
    )
    return result


async def run_contender(
    name: str,
    bootstrap: str,
    source: str,
    count: int,
    cfg: Config,
    label: str | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Throughput:
    """Contender `name` of contenders.py; `label`, `args` and `env` make a variant of it."""
    label = label or name
    run = uuid.uuid4().hex[:8]
    sink = f"out-{label}-{run}"
    await create_topics(bootstrap, [sink, f"{sink}-anomalies"], cfg.partitions)
    group = f"bench-{label}-{run}"
    argv = [*contender_argv(name, bootstrap, source, sink, group, cfg.workdir / group), *args]
    environ = {"PYTHONPATH": str(ROOT), "PIXELWATCH_MODEL": str(cfg.model), **(env or {})}
    process = spawn(argv, environ, cfg.workdir / f"{label}.log")
    return await measure(label, [process], bootstrap, sink, count, cfg.timeout, cfg.min_seconds)


async def run_worker(
    label: str,
    bootstrap: str,
    source: str,
    cfg: Config,
    extra: dict[str, str],
    workers: int = 1,
    expected: int | None = None,
    sink: str = "scores",
    images: int | None = None,
) -> Throughput:
    """`expected` outputs on the `sink` topic (scores, or anomalies when scores are off); the
    rate is in images a second when `images` (the images those outputs came from) is given."""
    run = uuid.uuid4().hex[:8]
    outputs = [f"{t}-{run}" for t in ("scores", "anomalies", "dlq")]
    await create_topics(bootstrap, outputs, cfg.partitions)
    argv = [sys.executable, "-m", "service.cli", "worker"]
    # Each worker gets its own metrics port and state directory, as on separate hosts.
    processes = [
        spawn(
            argv, worker_env(bootstrap, cfg, run, source, extra), cfg.workdir / f"{label}-{i}.log"
        )
        for i in range(workers)
    ]
    count = cfg.messages if expected is None else expected
    result = await measure(
        label, processes, bootstrap, f"{sink}-{run}", count, cfg.timeout, cfg.min_seconds
    )
    if images is not None:
        result.per_second = None if result.per_second is None else images / result.seconds
        result.messages = images
    return result


async def run_traced_worker(bootstrap: str, source: str, cfg: Config) -> Throughput:
    """The worker with tracing on, its spans sent to a Jaeger started for this run."""
    with Jaeger(cfg.workdir / f"jaeger-{uuid.uuid4().hex[:8]}") as jaeger:
        endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint}
        return await run_worker("worker_tracing", bootstrap, source, cfg, endpoint)


def latency_summary(latencies: list[float], rate: float) -> dict[str, float]:
    """p50, p99 and max of end-to-end latencies in ms, at `rate` inputs a second."""
    values = np.asarray(latencies)
    return {
        "rate_per_second": rate,
        "messages": float(len(values)),
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
    }


def paced_produce(bootstrap: str, topic: str, images: np.ndarray, rate: float) -> None:
    """Send `images` at `rate` a second (librdkafka, in ticks of 5 ms), each stamped with the
    time it is handed to the producer."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    started = time.monotonic()
    sent = 0
    while sent < len(images):
        due = min(len(images), int((time.monotonic() - started) * rate) + 1)
        for i in range(sent, due):
            ident = f"lat-{i}"
            value = encode(images[i], ident, int(time.time() * 1000))
            producer.produce(topic, value, ident.encode())
        sent = due
        producer.poll(0)
        time.sleep(0.005)
    producer.flush(60)


async def latency(bootstrap: str, cfg: Config, rate: float) -> dict[str, float]:
    """End-to-end latency at a fixed input rate: from an image's `ts` (when its producer
    created it) to the broker appending its score (the scores topic keeps LogAppendTime), so
    the measuring client's own speed does not count."""
    run = uuid.uuid4().hex[:8]
    source, scores = f"lat-in-{run}", f"scores-{run}"
    await create_topics(bootstrap, [source, f"anomalies-{run}", f"dlq-{run}"], cfg.partitions)
    await create_topics(
        bootstrap, [scores], cfg.partitions, {"message.timestamp.type": "LogAppendTime"}
    )
    env = worker_env(bootstrap, cfg, run, source, {})
    worker = spawn(
        [sys.executable, "-m", "service.cli", "worker"], env, cfg.workdir / "latency.log"
    )
    count = max(int(rate * cfg.latency_seconds), 10)
    images = make_images(count + 1, cfg.anomalous_share, seed=1)
    try:
        # Warm up: one message through, so group joining is not counted as latency.
        await produce_images(bootstrap, source, images[:1], "warm-")
        await wait_for_outputs(bootstrap, scores, 1, [worker], cfg.timeout)
        await asyncio.to_thread(paced_produce, bootstrap, source, images[1:], rate)
        await wait_for_outputs(bootstrap, scores, count + 1, [worker], cfg.timeout)
    finally:
        stop(worker)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    latencies: list[float] = []
    try:
        consumer.assign([TopicPartition(scores, p) for p in range(cfg.partitions)])
        await consumer.seek_to_beginning()
        while len(latencies) < count:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    out = json.loads(r.value)
                    if out["id"].startswith("lat-"):
                        latencies.append(r.timestamp - out["ts"])
    finally:
        await consumer.stop()
    return latency_summary(latencies, rate)


EXACTLY_ONCE = {
    "PIXELWATCH_PROCESSING_GUARANTEE": "exactly_once",
    "PIXELWATCH_GROUP_INSTANCE_ID": "bench",  # a stable transactional.id, as in production
}
GUARANTEES = {"at_least_once": {}, "exactly_once": EXACTLY_ONCE}


async def visible_latency(
    bootstrap: str, cfg: Config, rate: float, extra: dict[str, str]
) -> dict[str, float]:
    """End-to-end latency as a read_committed consumer sees it, at a fixed input rate: from an
    image's `ts` to its score reaching a consumer that reads alongside the worker. An
    exactly_once worker's outputs become visible only when their transaction commits, which
    the broker's append time (`latency`) would not show; the reader's own delay counts here,
    the same for both modes."""
    run = uuid.uuid4().hex[:8]
    source, scores = f"vis-in-{run}", f"scores-{run}"
    await create_topics(
        bootstrap, [source, scores, f"anomalies-{run}", f"dlq-{run}"], cfg.partitions
    )
    worker = spawn(
        [sys.executable, "-m", "service.cli", "worker"],
        worker_env(bootstrap, cfg, run, source, extra),
        cfg.workdir / f"visible-{run}.log",
    )
    count = max(int(rate * cfg.latency_seconds), 10)
    images = make_images(count + 1, cfg.anomalous_share, seed=2)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    latencies: list[float] = []

    async def read() -> None:
        while len(latencies) < count:
            worker.check_running()
            batch = await consumer.getmany(timeout_ms=200)
            now_ms = time.time() * 1000
            for records in batch.values():
                for r in records:
                    out = json.loads(r.value)
                    if out["id"].startswith("lat-"):
                        latencies.append(now_ms - out["ts"])

    try:
        await produce_images(bootstrap, source, images[:1], "warm-")
        await wait_for_outputs(bootstrap, scores, 1, [worker], cfg.timeout)
        consumer.assign([TopicPartition(scores, p) for p in range(cfg.partitions)])
        await consumer.seek_to_beginning()
        reading = asyncio.ensure_future(asyncio.wait_for(read(), cfg.timeout))
        await asyncio.to_thread(paced_produce, bootstrap, source, images[1:], rate)
        await reading
    finally:
        stop(worker)
        await consumer.stop()
    return latency_summary(latencies, rate)


async def commit_trade_off(
    bootstrap: str, source: str, cfg: Config, rate: float
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per guarantee and PIXELWATCH_COMMIT_INTERVAL: throughput, and the latency a
    read_committed reader sees at `rate` (the same rate for all)."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for guarantee, knobs in GUARANTEES.items():
        table[guarantee] = {}
        for interval in cfg.commit_intervals:
            extra = {**knobs, "PIXELWATCH_COMMIT_INTERVAL": str(interval)}
            label = f"worker_{guarantee}_commit_{interval:g}s"
            console.print(f"  {label}…")
            done = await run_worker(label, bootstrap, source, cfg, extra)
            seen = await visible_latency(bootstrap, cfg, rate, extra)
            table[guarantee][f"{interval:g}"] = {
                "per_second": done.per_second,
                "p50_ms": seen["p50_ms"],
                "p99_ms": seen["p99_ms"],
            }
    return table


def ensure_model(path: Path, seed: int = 0) -> None:
    """The course's model (another seed gives the shadow candidate), trained once.

    A model left by an older build that this one refuses (another format) is trained again.
    """
    if path.is_file():
        try:
            load_model(path)
            return
        except ModelError as exc:
            print(f"training {path} again: {exc}", flush=True)
    command = [
        sys.executable, "-m", "service.cli", "train", "--data", str(SEED_TRAIN),
        "--out", str(path), "--epochs", "800", "--threshold", "0.6", "--no-progress",
        "--seed", str(seed),
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


_THROUGHPUT: Final = (
    "librdkafka", "aiokafka", "faust_agent", "faust_agent_quiet_monitor",
    "faust_agent_no_cython", "worker", "worker_traceparent", "worker_tracing",
    "worker_exactly_once", "worker_tuned", "worker_x2",
    "worker_binary", "worker_binary_anomalies_only", "worker_binary_grouped",
)  # fmt: skip
SIZED: Final = tuple(
    name
    for s in SIZES
    for name in (f"librdkafka_u8_{s}x{s}", *(f"worker_u8_{s}x{s}_{a}" for a in ARCHITECTURES))
)
SECTIONS: Final = (
    "latency", "commit_interval_trade_off", "own_cost", "cost_by_size", "shadow_cost",
    "memory_bank_cost",
)  # fmt: skip
CONTENDERS: Final = _THROUGHPUT + SIZED
_JSON_READERS: Final = (
    "librdkafka", "aiokafka", "worker", "worker_exactly_once", "worker_tuned", "worker_x2",
    "commit_interval_trade_off",
)  # fmt: skip
# ratio name -> (numerator, denominator): contenders' rates
RATIOS: Final = {
    "worker/librdkafka": ("worker", "librdkafka"),
    "worker/aiokafka": ("worker", "aiokafka"),
    "worker_exactly_once/worker": ("worker_exactly_once", "worker"),
    "worker/faust_agent": ("worker", "faust_agent"),
    "faust_agent_quiet_monitor/faust_agent": ("faust_agent_quiet_monitor", "faust_agent"),
    "faust_agent_no_cython/faust_agent": ("faust_agent_no_cython", "faust_agent"),
    "worker_tuned/librdkafka": ("worker_tuned", "librdkafka"),
    "worker_x2/worker": ("worker_x2", "worker"),
    "binary images/librdkafka messages": ("worker_binary", "librdkafka"),
    "binary images (anomalies only)/librdkafka messages": (
        "worker_binary_anomalies_only", "librdkafka",
    ),
    "binary images (scores grouped by message)/librdkafka messages": (
        "worker_binary_grouped", "librdkafka",
    ),
    "worker_traceparent/worker": ("worker_traceparent", "worker"),
    "worker_tracing/worker": ("worker_tracing", "worker"),
    "worker_tracing/worker_traceparent": ("worker_tracing", "worker_traceparent"),
} | {
    f"{name} MB/s / librdkafka_u8_{s}x{s} MB/s": (name, f"librdkafka_u8_{s}x{s}")
    for s in SIZES
    for name in (f"worker_u8_{s}x{s}_{a}" for a in ARCHITECTURES)
}  # fmt: skip
# target name -> (ratio, least value)
RATIO_TARGETS: Final = {
    "worker/librdkafka >= 0.5": ("worker/librdkafka", 0.5),
    "worker/faust_agent >= 10": ("worker/faust_agent", 10.0),
    "worker_exactly_once/worker >= 0.8": ("worker_exactly_once/worker", 0.8),
    "binary images/librdkafka messages >= 2 (scores on)": (
        "binary images/librdkafka messages", 2.0,
    ),
    "binary images/librdkafka messages >= 2 (anomalies only)": (
        "binary images (anomalies only)/librdkafka messages", 2.0,
    ),
    "binary images/librdkafka messages >= 5 (scores grouped)": (
        "binary images (scores grouped by message)/librdkafka messages", 5.0,
    ),
    # Inputs that carry a traceparent, tracing off: carrying it costs (almost) nothing.
    "worker_traceparent/worker >= 0.95": ("worker_traceparent/worker", 0.95),
}  # fmt: skip


def selected(only: frozenset[str] | None) -> frozenset[str]:
    """What a run measures: everything, or the named contenders and sections (the latency
    sections run at half the worker's rate, so they bring the `worker` contender along)."""
    if only is None:
        return frozenset(CONTENDERS + SECTIONS)
    unknown = only - set(CONTENDERS) - set(SECTIONS)
    if unknown:
        raise ValueError(
            f"--only: unknown {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(CONTENDERS + SECTIONS)}"
        )
    if only & {"latency", "commit_interval_trade_off"}:
        return only | {"worker"}
    return only


def size_name(model: Model) -> str:
    return f"{model.shape.width}x{model.shape.height}"


def sized_load(path: Path, sample: NDArray[np.float32], share: float, per_image: float) -> Load:
    """The load of a bigger-image topic, its anomaly share as `path`'s model flags `sample`."""
    model = load_model(path)
    flagged = float(model.score(sample).anomaly.mean())
    return Load(mix(share), size_name(model), model.shape.size, flagged, per_image)


async def bigger_images(
    bootstrap: str, cfg: Config, wanted: frozenset[str], results: dict[str, Throughput]
) -> None:
    """Binary u8 messages of one 28x28 or 64x64 image: the passthrough and a worker per
    architecture on the same topic (the workers time a prefix of it: fewer images)."""
    for size, count, scored in cfg.sized_messages:
        wants = wanted.__contains__
        names = [f"worker_u8_{size}x{size}_{a}" for a in ARCHITECTURES]
        passthrough = f"librdkafka_u8_{size}x{size}"
        if not any(wants(n) for n in (passthrough, *names)):
            continue
        paths = {
            n: ensure_sized_model(cfg.model.parent, size, a, cfg.sized_epochs)
            for n, a in zip(names, ARCHITECTURES, strict=True)
        }
        topic = f"bench-u8-{size}-{uuid.uuid4().hex[:8]}"
        await create_topics(bootstrap, [topic], cfg.partitions)
        console.print(f"producing {count} u8 {size}x{size} messages…")
        sample = sized_images(size, min(count, 5000), cfg.anomalous_share, seed=size)
        total = 0
        for start in range(0, count, 5000):  # in slices: 60,000 64x64 images are 980 MB as float32
            chunk = sized_images(size, min(5000, count - start), cfg.anomalous_share, seed=start)
            total += await produce_images(
                bootstrap, topic, chunk, f"u8-{start}-", fmt="u8", per_message=1
            )

        if wants(passthrough):
            done = await run_contender("librdkafka", bootstrap, topic, count, cfg, passthrough)
            results[passthrough] = done.describe(
                sized_load(paths[names[0]], sample, cfg.anomalous_share, total / count)
            )
        for name in names:
            if wants(name):
                extra = {"PIXELWATCH_MODEL": str(paths[name])}
                done = await run_worker(name, bootstrap, topic, cfg, extra, expected=scored)
                results[name] = done.describe(
                    sized_load(paths[name], sample, cfg.anomalous_share, total / count)
                )


async def bench(bootstrap: str, cfg: Config) -> dict[str, Any]:
    wanted = selected(cfg.only)
    wants = wanted.__contains__
    ensure_model(cfg.model)
    model = load_model(cfg.model)
    candidate = cfg.candidate or cfg.workdir / "candidate.onnx"
    if cfg.candidate is None and wants("shadow_cost"):
        ensure_model(candidate, seed=1)
    run = uuid.uuid4().hex[:8]
    source, faust_source, binary_source, traced_source = (
        f"bench-{k}-{run}" for k in ("in", "faust", "bits", "traced")
    )
    await create_topics(
        bootstrap, [source, faust_source, binary_source, traced_source], cfg.partitions
    )
    console.print(f"producing {cfg.messages} messages over {cfg.partitions} partitions…")
    images = make_images(cfg.messages, cfg.anomalous_share)
    per = cfg.images_per_message
    sent = {"json": 0, "faust": 0, "bits": 0, "traced": 0}
    if any(wants(n) for n in _JSON_READERS):
        sent["json"] = await produce_images(bootstrap, source, images, "img-")
    if any(wants(n) for n in _THROUGHPUT if n.startswith("faust")):
        sent["faust"] = await produce_images(
            bootstrap, faust_source, images[: cfg.faust_messages], "img-"
        )
    if any(wants(n) for n in _THROUGHPUT if n.startswith("worker_binary")):
        sent["bits"] = await produce_images(
            bootstrap, binary_source, images, "bin-", fmt="bits", per_message=per
        )
    if wants("worker_traceparent") or wants("worker_tracing"):
        # The same images, each with a W3C traceparent of its own.
        sent["traced"] = await produce_images(bootstrap, traced_source, images, "img-", traced=True)
    flags = model.score(images).anomaly
    size, pixels = size_name(model), model.shape.size

    def load(kind: str, count: int) -> Load:
        return Load(
            mix(cfg.anomalous_share), size, pixels, float(flags[:count].mean()), sent[kind] / count
        )

    json_load, bits_load = load("json", cfg.messages), load("bits", cfg.messages)
    traced_load = load("traced", cfg.messages)
    faust_load = load("faust", cfg.faust_messages)

    results: dict[str, Throughput] = {}

    async def take(name: str, what: Load, contender: Coroutine[Any, Any, Throughput]) -> None:
        if wants(name):
            results[name] = (await contender).describe(what)
        else:
            contender.close()  # not run

    console.print("throughput:")
    await take(
        "librdkafka", json_load, run_contender("librdkafka", bootstrap, source, cfg.messages, cfg)
    )
    await take(
        "aiokafka", json_load, run_contender("aiokafka", bootstrap, source, cfg.messages, cfg)
    )
    await take(
        "faust_agent", faust_load,
        run_contender("faust_agent", bootstrap, faust_source, cfg.faust_messages, cfg),
    )  # fmt: skip
    # The two cheap tries at a faster faust: its per-event bookkeeping left out, and (to see
    # what the compiled stream iterator, on by default, already gives) that iterator off.
    await take(
        "faust_agent_quiet_monitor", faust_load,
        run_contender(
            "faust_agent", bootstrap, faust_source, cfg.faust_messages, cfg,
            label="faust_agent_quiet_monitor", args=("--quiet-monitor",),
        ),
    )  # fmt: skip
    await take(
        "faust_agent_no_cython", faust_load,
        run_contender(
            "faust_agent", bootstrap, faust_source, cfg.faust_messages, cfg,
            label="faust_agent_no_cython", env={"NO_CYTHON": "1"},
        ),
    )  # fmt: skip
    await take("worker", json_load, run_worker("worker", bootstrap, source, cfg, {}))
    # Every input carries a traceparent; tracing (OpenTelemetry) is off.
    await take(
        "worker_traceparent", traced_load,
        run_worker("worker_traceparent", bootstrap, traced_source, cfg, {}),
    )  # fmt: skip
    # The same inputs, tracing on: one span per batch, sent to a local Jaeger.
    await take("worker_tracing", traced_load, run_traced_worker(bootstrap, traced_source, cfg))
    await take(
        "worker_exactly_once", json_load,
        run_worker("worker_exactly_once", bootstrap, source, cfg, EXACTLY_ONCE),
    )  # fmt: skip
    await take(
        "worker_tuned", json_load, run_worker("worker_tuned", bootstrap, source, cfg, cfg.tuned)
    )
    await take(
        "worker_x2", json_load, run_worker("worker_x2", bootstrap, source, cfg, {}, workers=2)
    )
    await take(
        "worker_binary", bits_load,
        run_worker("worker_binary", bootstrap, binary_source, cfg, {}, expected=cfg.messages),
    )  # fmt: skip
    # The same, answering only the anomalies (scores topic off): producing one record per
    # image, not scoring, is then no longer what bounds the rate.
    await take(
        "worker_binary_anomalies_only", bits_load,
        run_worker(
            "worker_binary_anomalies_only", bootstrap, binary_source, cfg,
            {"PIXELWATCH_SCORES_ENABLED": "false"},
            expected=int(flags.sum()), sink="anomalies", images=cfg.messages,
        ),
    )  # fmt: skip
    # One scores record per message of `per` images (PIXELWATCH_SCORES_GROUPING=message).
    await take(
        "worker_binary_grouped", bits_load,
        run_worker(
            "worker_binary_grouped", bootstrap, binary_source, cfg,
            {"PIXELWATCH_SCORES_GROUPING": "message"},
            expected=-(-cfg.messages // per), images=cfg.messages,
        ),
    )  # fmt: skip
    await bigger_images(bootstrap, cfg, wanted, results)

    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "versions": {
            "kafka": KAFKA_VERSION,
            **{
                p: version(p)
                for p in ("pixelwatch", "confluent-kafka", "faust-streaming", "onnxruntime")
            },
        },
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "throughput": {k: asdict(v) for k, v in results.items()},
    }
    worker_rate = results["worker"].per_second if "worker" in results else None
    if worker_rate is None and (wants("latency") or wants("commit_interval_trade_off")):
        console.print("latency runs left out: they run at half the worker's timed rate")
    elif worker_rate is not None:
        if wants("latency"):
            console.print("latency at 50% of the worker's throughput…")
            report["latency"] = await latency(bootstrap, cfg, 0.5 * worker_rate)
        if wants("commit_interval_trade_off"):
            console.print("latency to a read_committed reader, by guarantee and commit interval…")
            report["commit_interval_trade_off"] = await commit_trade_off(
                bootstrap, source, cfg, 0.5 * worker_rate
            )
    if wants("own_cost"):
        console.print("own cost per message, in-process…")
        report["own_cost"] = own_cost(model)
    if wants("cost_by_size"):
        console.print("cost per image and stage by image size, in-process…")
        report["cost_by_size"] = cost_by_size(
            {f"{size} dense (course)": (model, images)}
            | {
                f"{s}x{s} {a}": (
                    load_model(ensure_sized_model(cfg.model.parent, s, a, cfg.sized_epochs)),
                    sized_images(s, 500, cfg.anomalous_share),
                )
                for s in SIZES
                for a in ARCHITECTURES
            }
        )
    if wants("shadow_cost"):
        console.print("shadow scoring cost, in-process…")
        from benchmarks.shadow_cost import shadow_cost  # it reuses this module's images

        report["shadow_cost"] = shadow_cost(cfg.model, candidate, batches=cfg.cost_batches)
    if wants("memory_bank_cost"):
        console.print("memory-bank cost, in-process…")
        memory = measure_memory_cost(cfg.memory_sizes, (1, 64, 500))
        report["memory_bank_cost"] = [asdict(point) for point in memory]

    rates = {name: row.per_second for name, row in results.items()}
    ratios: dict[str, float | None] = {
        name: ratio(rates[a], rates[b])
        for name, (a, b) in RATIOS.items()
        if a in rates and b in rates
    }
    if "own_cost" in report:
        own = report["own_cost"]
        ratios["own cost/plain JSON round trip"] = own["json_us"] / own["baseline_us"]
    if "shadow_cost" in report:
        ratios["with a shadow/without"] = report["shadow_cost"]["ratio"]
    targets: dict[str, bool | None] = {
        name: None if (value := ratios[key]) is None else value >= least
        for name, (key, least) in RATIO_TARGETS.items()
        if key in ratios
    }
    if "latency" in report:
        window_ms = Settings().batch_window * 1000
        targets[f"p99 <= window + 25 ms ({window_ms + 25:.0f} ms)"] = (
            report["latency"]["p99_ms"] <= window_ms + 25
        )
    if "worker" in results:
        targets["peak RSS <= 300 MB"] = (results["worker"].peak_rss_mb or 0) <= 300
    if "own_cost" in report:
        targets["own cost <= 6 us per JSON message"] = report["own_cost"]["json_us"] <= 6.0
    report["ratios"] = ratios
    report["targets"] = targets
    return report


def print_table(report: dict[str, Any]) -> None:
    table = Table(title="pixelwatch benchmark")
    for column in ("contender", "load", "size", "flagged", "images", "seconds"):
        table.add_column(column, justify="left" if column in ("contender", "load") else "right")
    for column in ("per second", "MB/s", "Mpixels/s", "peak RSS MB"):
        table.add_column(column, justify="right")
    for name, row in report["throughput"].items():
        rss, rate, mb = row["peak_rss_mb"], row["per_second"], row["mb_per_second"]
        share, pixels = row["anomaly_share"], row["pixels_per_second"]
        table.add_row(
            name, row["load"], row["image_size"],
            "" if share is None else f"{100 * share:.1f}%",
            f"{row['messages']:,}", f"{row['seconds']:.2f}",
            row["note"] if rate is None else f"{rate:,.0f}",
            "" if mb is None else f"{mb:,.1f}",
            "" if pixels is None else f"{pixels / 1e6:,.1f}",
            f"{rss:.0f}" if rss else "",
        )  # fmt: skip
    out = Console(highlight=False)
    out.print(table)
    out.print(f"load average: {', '.join(f'{x:.2f}' for x in report['machine']['load_average'])}")
    if "latency" in report:
        lat = report["latency"]
        out.print(
            f"latency at {lat['rate_per_second']:,.0f}/s: p50 {lat['p50_ms']:.1f} ms, "
            f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms"
        )
    if "commit_interval_trade_off" in report:
        out.print("by commit interval (throughput; latency to a read_committed reader):")
        for guarantee, rows in report["commit_interval_trade_off"].items():
            for interval, row in rows.items():
                rate = (
                    "too short to time"
                    if row["per_second"] is None
                    else (f"{row['per_second']:,.0f}/s")
                )
                out.print(
                    f"  {guarantee} {interval} s: {rate}, "
                    f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms"
                )
    if "own_cost" in report:
        own = report["own_cost"]
        out.print(
            f"own cost per message (decode, validate, score, encode): JSON {own['json_us']:.2f} "
            f"µs, JSON batch {own['json_batch_us']:.2f} µs/image, u8 {own['u8_us']:.2f} "
            f"µs/image, bits {own['bits_us']:.2f} µs/image (scores grouped by message "
            f"{own['bits_grouped_us']:.2f}); plain orjson loads+dumps "
            f"{own['baseline_us']:.2f} µs"
        )
    if "cost_by_size" in report:
        sizes = Table(title="µs per image by stage (single-image u8 messages, in-process)")
        for column in ("model", "decode", "onnx", "encode", "produce", "total", "dominant"):
            sizes.add_column(column, justify="left" if column in ("model", "dominant") else "right")
        for row in report["cost_by_size"]:
            sizes.add_row(
                row["model"],
                *(f"{row[f'{stage}_us']:.2f}" for stage in ("decode", "onnx", "encode", "produce")),
                f"{row['total_us']:.2f}",
                row["dominant"],
            )
        out.print(sizes)
    if "shadow_cost" in report:
        shadow = report["shadow_cost"]
        out.print(
            f"shadow scoring: {shadow['us_per_image_live']:.2f} µs/image alone, "
            f"{shadow['us_per_image_with_shadow']:.2f} with a shadow (x{shadow['ratio']:.2f}; "
            f"its ONNX call {shadow['us_per_image_shadow_onnx_call']:.2f} µs/image)"
        )
    if "memory_bank_cost" in report:
        out.print("memory bank (dense network, gray):")
        out.print(markdown([CostPoint(**point) for point in report["memory_bank_cost"]]))
    for name, value in report["ratios"].items():
        out.print(f"{name}: {TOO_SHORT if value is None else f'{value:.2f}'}")
    for name, ok in report["targets"].items():
        verdict = "not timed (too short)" if ok is None else ("met" if ok else "MISSED")
        out.print(f"target {name}: {verdict}")


def results_file(only: frozenset[str] | None) -> Path:
    """Where a run's report goes by default: a partial run never overwrites the full run's
    file, which `make plots` and the docs read."""
    return ROOT / "bench-results" / ("bench.json" if only is None else "bench-only.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    defaults = Config()
    parser.add_argument("--messages", type=int, default=defaults.messages)
    parser.add_argument("--partitions", type=int, default=defaults.partitions)
    parser.add_argument("--faust-messages", type=int, default=defaults.faust_messages)
    parser.add_argument("--latency-seconds", type=float, default=defaults.latency_seconds)
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting a local one")
    parser.add_argument(
        "--out",
        type=Path,
        help="results file (default: bench-results/bench.json, or bench-only.json for --only)",
    )
    parser.add_argument(
        "--only",
        # Not PIXELWATCH_-prefixed: the workers it spawns inherit the environment and refuse
        # a PIXELWATCH_ variable that is not one of their settings.
        default=os.environ.get("BENCH_ONLY"),
        metavar="NAME,...",
        help="run only these contenders and sections, comma-separated (default: "
        "$BENCH_ONLY, or all). Contenders: "
        + ", ".join(CONTENDERS)
        + "; sections: "
        + ", ".join(SECTIONS)
        + " (the latency sections bring `worker` along). Ratios and "
        "targets are reported for what ran",
    )
    args = parser.parse_args(argv)
    only = frozenset(n.strip() for n in args.only.split(",") if n.strip()) if args.only else None
    try:
        selected(only)
    except ValueError as exc:
        parser.error(str(exc))
    cfg = Config(
        messages=args.messages,
        partitions=args.partitions,
        faust_messages=min(args.faust_messages, args.messages),
        latency_seconds=args.latency_seconds,
        only=only,
    )
    if args.bootstrap:
        report = asyncio.run(bench(args.bootstrap, cfg))
    else:
        with LocalBroker(port=free_port()) as broker:
            report = asyncio.run(bench(broker.bootstrap, cfg))
    out = args.out or results_file(only)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    console.print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
