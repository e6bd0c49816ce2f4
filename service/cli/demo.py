"""`pixelwatch demo`: the whole product on one machine, start to finish.

Starts a local Kafka broker (or uses PIXELWATCH_BOOTSTRAP), trains the course's model if
it is absent, scores the course's test images offline, then starts a worker, streams the
test images plus some normal and random-noise images, prints each anomaly as it arrives,
and shuts everything down.
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console

from service.cli.produce import produce
from service.config import Settings, load_settings
from service.errors import PixelwatchError
from service.kafka.broker import LocalBroker, free_port
from service.kafka.options import client_options
from service.kafka.topics import wait_for_partitions
from service.samples import SEED_TEST, SEED_TRAIN
from service.scoring.images import ImageShape, read_images, render

console = Console(highlight=False)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("artifacts/seed.onnx"))
    parser.add_argument("--noise", type=int, default=6, help="random noise images to stream")
    parser.add_argument("--normal", type=int, default=10, help="normal images to stream")
    parser.add_argument("--seed", type=int, default=0, help="seed for training and noise")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for results")


def pixelwatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


def ensure_model(path: Path, seed: int) -> None:
    if path.is_file():
        console.print(f"[dim]using the trained model {path}[/]")
        return
    console.rule("1. train the course's autoencoder on its two normal images")
    command = pixelwatch(
        "train", "--data", str(SEED_TRAIN), "--out", str(path), "--epochs", "800",
        "--seed", str(seed), "--threshold", "0.6",
    )  # fmt: skip
    if subprocess.run(command, check=False).returncode != 0:
        raise PixelwatchError("training the demo model failed (see above)")


@contextlib.contextmanager
def kafka(settings_bootstrap: str | None) -> Iterator[tuple[str, bool]]:
    """Yields (bootstrap, fresh): a fresh local broker unless PIXELWATCH_BOOTSTRAP is set."""
    if settings_bootstrap:
        console.print(f"[dim]using Kafka at {settings_bootstrap} (PIXELWATCH_BOOTSTRAP)[/]")
        yield settings_bootstrap, False
        return
    broker = LocalBroker(port=free_port())
    console.print("[dim]starting a local Apache Kafka broker…[/]")
    broker.start()
    console.print(f"[dim]Kafka ready on {broker.bootstrap}[/]")
    try:
        yield broker.bootstrap, True
    finally:
        broker.stop()
        console.print("[dim]Kafka stopped[/]")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    env_bootstrap = os.environ.get("PIXELWATCH_BOOTSTRAP")
    ensure_model(args.model, args.seed)

    console.rule("2. score the course's test images offline")
    score = pixelwatch("score", "--model", str(args.model), str(SEED_TEST))
    if subprocess.run(score, check=False).returncode != 0:
        raise PixelwatchError("offline scoring failed (see above)")

    console.rule("3. live: Kafka -> worker -> anomalies")
    with kafka(env_bootstrap) as (bootstrap, fresh):
        # On a shared broker, private topic names keep the demo away from real traffic.
        suffix = "" if fresh else f".demo-{secrets.token_hex(3)}"
        settings = load_settings(
            bootstrap=bootstrap,
            group_id=f"pixelwatch-demo{suffix}",
            input_topic=f"pixelwatch.images{suffix}",
            anomalies_topic=f"pixelwatch.anomalies{suffix}",
            scores_topic=f"pixelwatch.scores{suffix}",
            dlq_topic=f"pixelwatch.dlq{suffix}",
            shadow_topic=f"pixelwatch.shadow{suffix}",
            models_topic=f"pixelwatch.models{suffix}",
            partitions=2,
        )
        data_dir = Path(".pixelwatch") / "demo"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = _worker_env(settings, args.model, data_dir)
        log_path = data_dir / "worker.log"
        with log_path.open("wb") as log_file:
            # The worker's own log (group joins, commits) would drown the anomalies: keep it aside.
            worker = subprocess.Popen(
                pixelwatch("worker"), env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
            console.print(f"[dim]worker started (log: {log_path})[/]")
            try:
                asyncio.run(_stream(settings, args, worker))
            except BaseException:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                console.print("[dim]last lines of the worker log:[/]\n" + "\n".join(tail))
                raise
            finally:
                worker.send_signal(signal.SIGTERM)
                code = worker.wait(timeout=60)
                console.print(f"[dim]worker stopped (exit code {code})[/]")
    console.print(f"[bold]demo finished in {time.monotonic() - started:.0f}s[/]")
    return 0


def _worker_env(settings: Settings, model: Path, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PIXELWATCH_BOOTSTRAP=settings.bootstrap,
        PIXELWATCH_GROUP_ID=settings.group_id,
        PIXELWATCH_INPUT_TOPIC=settings.input_topic,
        PIXELWATCH_ANOMALIES_TOPIC=settings.anomalies_topic,
        PIXELWATCH_SCORES_TOPIC=settings.scores_topic,
        PIXELWATCH_DLQ_TOPIC=settings.dlq_topic,
        PIXELWATCH_SHADOW_TOPIC=settings.shadow_topic,
        # Its own models topic too: a model published for real workers must not reach it.
        PIXELWATCH_MODELS_TOPIC=settings.models_topic,
        PIXELWATCH_PARTITIONS=str(settings.partitions),
        PIXELWATCH_MODEL=str(model),
        PIXELWATCH_METRICS_PORT=str(free_port()),
        PIXELWATCH_METRICS_HOST="127.0.0.1",  # its page shows pixel data: this machine only
        PIXELWATCH_DATA_DIR=str(data_dir),
        PIXELWATCH_LOG_LEVEL="WARNING",
    )
    return env


async def _stream(
    settings: Settings, args: argparse.Namespace, worker: subprocess.Popen[bytes]
) -> None:
    shape = ImageShape(8, 8)
    rng = np.random.default_rng(args.seed)
    test = read_images(SEED_TEST, shape).pixels
    normal = read_images(SEED_TRAIN, shape).pixels
    noise = (rng.random((args.noise, shape.size)) < 0.5).astype(np.float32)
    normal_rows = normal[np.arange(args.normal) % len(normal)]
    images = np.concatenate([test, normal_rows, noise])
    names = ["shifted-square", "noisy-triangle", "corners", "x"]
    names += [f"normal-{i}" for i in range(args.normal)] + [f"noise-{i}" for i in range(args.noise)]

    consumer = AIOKafkaConsumer(
        **client_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",  # an exactly_once worker's aborted records stay out
    )
    await consumer.start()
    try:
        # The worker creates the topics. Every image is answered on the scores topic (compact
        # records); the flagged ones also on the anomalies topic, with their pixels.
        topics = [settings.scores_topic, settings.anomalies_topic]
        waiting = asyncio.ensure_future(
            asyncio.gather(*(wait_for_partitions(settings, t, args.timeout) for t in topics))
        )
        while not waiting.done():
            if worker.poll() is not None:
                waiting.cancel()
                raise PixelwatchError(f"the worker exited early with code {worker.returncode}")
            await asyncio.sleep(0.25)
        consumer.assign(
            [
                TopicPartition(topic, p)
                for topic, partitions in zip(topics, waiting.result(), strict=True)
                for p in partitions
            ]
        )
        await consumer.seek_to_beginning()
        await produce(settings, images, names)
        console.print(f"streamed {len(names)} images to {settings.input_topic}")
        await _show_results(consumer, settings, set(names), shape, worker, args.timeout)
    finally:
        await consumer.stop()


async def _show_results(
    consumer: AIOKafkaConsumer,
    settings: Settings,
    expected: set[str],
    shape: ImageShape,
    worker: subprocess.Popen[bytes],
    wait: float,
) -> None:
    scored: set[str] = set()
    anomalous: set[str] = set()  # as the scores topic says
    flagged: dict[str, dict[str, Any]] = {}  # as received from the anomalies topic
    deadline = time.monotonic() + wait
    while scored != expected or flagged.keys() != anomalous:
        if worker.poll() is not None:
            raise PixelwatchError(f"the worker exited early with code {worker.returncode}")
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(expected - scored))
            raise PixelwatchError(f"no result within {wait:.0f}s for: {missing}")
        batches = await consumer.getmany(timeout_ms=500)
        for tp, records in batches.items():
            for record in records:
                out = orjson.loads(record.value)
                ident = out["id"]
                if ident not in expected:
                    continue
                if tp.topic == settings.scores_topic:
                    scored.add(ident)
                    if out["anomaly"]:
                        anomalous.add(ident)
                elif ident not in flagged:
                    flagged[ident] = out
                    _print_anomaly(out, shape)
    normal = len(scored) - len(flagged)
    first = next(iter(flagged.values()), None)
    rule = f" (threshold: {first['metric']} < {first['threshold']:.0%})" if first else ""
    console.print(
        f"[bold]{len(scored)} images scored: {len(flagged)} anomalies, {normal} normal[/]{rule}"
    )


def _print_anomaly(out: dict[str, object], shape: ImageShape) -> None:
    source = out["source"]
    assert isinstance(source, dict)
    console.print(
        f"[bold red]ANOMALY[/] {out['id']}  {out['metric']} {out['similarity']:.1%}  "
        f"from {source['topic']}[{source['partition']}]@{source['offset']}"
    )
    left = render(np.asarray(out["pixels"]), shape)
    right = render(np.asarray(out["reconstruction"]), shape)
    console.print(f"[dim]{'input':<{shape.width}}   reconstruction[/]")
    for a, b in zip(left, right, strict=True):
        console.print(f"{a}   {b}")
