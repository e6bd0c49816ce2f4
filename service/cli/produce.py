"""`pixelwatch produce`: send images from a file to the input topic, for demos and load."""

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from rich.progress import Progress

from service.cli.inputs import add_input_options, report_skipped
from service.config import Settings
from service.errors import PixelwatchError
from service.kafka.options import client_options
from service.scoring.images import ImageShape, Pixels, read_images
from service.scoring.model import load_model


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", help="images: X/. text, .csv, .npy, PNG/JPEG, a folder of them or a quoted glob"
    )
    parser.add_argument("--topic", help="input topic (default: PIXELWATCH_INPUT_TOPIC)")
    parser.add_argument("--bootstrap", help="Kafka servers (default: PIXELWATCH_BOOTSTRAP)")
    parser.add_argument(
        "--count", type=int, help="messages to send, cycling the file (default: each once)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="messages per second (0: as fast as possible)"
    )
    parser.add_argument("--model", type=Path, help="take the image size from this model")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--height", type=int, default=8)
    parser.add_argument(
        "--id-prefix", help="message ids are PREFIX-N (default: file name + run id)"
    )
    add_input_options(parser)


def encode(pixels: Pixels, ident: str, ts_ms: int) -> bytes:
    """One input message, as the worker's ImageMessage schema describes it."""
    return orjson.dumps(
        {"id": ident, "pixels": pixels, "ts": ts_ms}, option=orjson.OPT_SERIALIZE_NUMPY
    )


async def produce(
    settings: Settings,
    images: Pixels,
    ids: list[str],
    *,
    rate: float = 0.0,
    topic: str | None = None,
    show_progress: bool = False,
) -> int:
    """Send images[i] with id ids[i]; returns how many were acknowledged by Kafka."""
    producer = AIOKafkaProducer(**client_options(settings), linger_ms=5, acks="all")
    await producer.start()
    target = topic or settings.input_topic
    pending: list[asyncio.Future[object]] = []
    started = time.monotonic()
    try:
        with Progress(disable=not show_progress, transient=True) as progress:
            task = progress.add_task(f"producing to {target}", total=len(ids))
            for i, ident in enumerate(ids):
                if rate > 0:
                    # Pace against the schedule, not per message, so rates stay accurate.
                    ahead = started + i / rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                value = encode(images[i % len(images)], ident, int(time.time() * 1000))
                pending.append(await producer.send(target, value=value, key=ident.encode()))
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    progress.advance(task, len(pending))
                    pending.clear()
            await asyncio.gather(*pending)
            progress.advance(task, len(pending))
    finally:
        await producer.stop()
    return len(ids)


def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in {"bootstrap": args.bootstrap}.items() if v}
    settings = Settings(**overrides)
    shape = load_model(args.model).shape if args.model else ImageShape(args.width, args.height)
    images = read_images(args.path, shape, binarize=args.binarize, skip_bad=args.skip_bad)
    report_skipped(images.skipped, sys.stderr)
    count = args.count if args.count is not None else len(images)
    if count < 1:
        raise PixelwatchError("--count must be at least 1")
    prefix = args.id_prefix or f"{Path(args.path).stem}-{secrets.token_hex(3)}"
    ids = [f"{prefix}-{i}" for i in range(count)]
    started = time.monotonic()
    sent = asyncio.run(
        produce(
            settings,
            np.asarray(images.pixels),
            ids,
            rate=args.rate,
            topic=args.topic,
            show_progress=sys.stderr.isatty(),
        )
    )
    elapsed = time.monotonic() - started
    print(
        f"sent {sent} images to {args.topic or settings.input_topic} in {elapsed:.1f}s "
        f"({sent / max(elapsed, 1e-9):,.0f}/s), ids {prefix}-0..{count - 1}"
    )
    return 0
