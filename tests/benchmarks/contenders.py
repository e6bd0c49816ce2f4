"""Baselines the worker is measured against, each run as its own process by bench.py.

- limit:  a minimal aiokafka passthrough (batched getmany, one output per input, sends not
          awaited one by one, periodic commit after the outputs are acknowledged).
- parse:  the same plus JSON decode of the input and encode of an output of the real size.
- naive:  the course's style in faust: one event at a time, a torch module per sample,
          every send awaited.
"""

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

COMMIT_SECONDS = 1.0


def fake_output(message: dict[str, Any], partition: int, offset: int) -> bytes:
    """An output shaped like the worker's ScoreMessage, with the input's pixels."""
    pixels = message["pixels"]
    return orjson.dumps(
        {
            "id": message.get("id") or f"in:{partition}:{offset}",
            "anomaly": False,
            "similarity": 0.984375,
            "metric": "hamming",
            "threshold": 0.6,
            "scores": {"hamming": 0.984375, "ruzicka": 0.95, "dice": 0.97, "cosine": 0.97},
            "model": {"version": "20261126T000000Z", "sha256": "0" * 64},
            "pixels": pixels,
            "reconstruction": pixels,
            "source": {"topic": "in", "partition": partition, "offset": offset},
            "ts": message.get("ts") or 0,
            "detected_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    )


async def passthrough(args: argparse.Namespace, parse: bool) -> None:
    consumer = AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    pending: list[asyncio.Future[Any]] = []
    last_commit = time.monotonic()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            for records in batches.values():
                for r in records:
                    value = r.value
                    if parse:
                        value = fake_output(orjson.loads(value), r.partition, r.offset)
                    pending.append(await producer.send(args.output, value=value, key=r.key))
            if time.monotonic() - last_commit > COMMIT_SECONDS and pending:
                # at-least-once: outputs acknowledged before their offsets are committed
                await asyncio.gather(*pending)
                pending.clear()
                await consumer.commit()
                last_commit = time.monotonic()
    finally:
        await producer.stop()
        await consumer.stop()


def naive(args: argparse.Namespace) -> None:
    """The course's per-sample loop inside a faust agent (imports torch: benchmark only)."""
    import faust
    import torch

    from model_export.architectures import build_autoencoder
    from service.scoring.images import ImageShape

    torch.set_num_threads(1)
    model = build_autoencoder("dense", ImageShape(8, 8), {}).eval()
    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        value_serializer="raw",
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        datadir=args.datadir,
    )
    source = app.topic(args.input, value_type=bytes, value_serializer="raw")
    sink = app.topic(args.output, value_type=bytes, value_serializer="raw")

    @app.agent(source)
    async def score(stream: Any) -> None:
        async for event in stream.events():
            message = orjson.loads(event.value)
            pixels = torch.tensor(message["pixels"], dtype=torch.float32)
            with torch.no_grad():
                output = (model(pixels) >= 0.5).float()
            similarity = 1.0 - float((pixels - output).abs().mean())
            value = fake_output(message, event.message.partition, event.message.offset)
            await sink.send(value=value, key=event.key)
            del similarity

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=["limit", "parse", "naive"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--datadir", default="/tmp/pixelwatch-bench-naive")
    args = parser.parse_args()
    if args.name == "naive":
        naive(args)
    else:
        asyncio.run(passthrough(args, parse=args.name == "parse"))


if __name__ == "__main__":
    main()
