"""`pixelwatch produce`: send images from a file to the input topic, for demos and load.

Images go one per JSON message by default; `--format u8|bits` sends binary pixels, and
`--per-message N` packs N images into each message (a JSON batch, or N binary images back
to back), the shapes deploy/schemas/ and docs/messages.md describe.
"""

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from rich.progress import Progress

from service.cli.inputs import add_input_options, report_skipped
from service.config import Settings, load_settings
from service.errors import PixelwatchError
from service.kafka.diagnose import quiet_bootstrap, unavailable
from service.kafka.options import client_options
from service.observability.logs import use_level
from service.schemas import HEADER_FORMAT, HEADER_ID
from service.scoring.images import ImageShape, Pixels, read_images
from service.scoring.model import load_model


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", help="images: X/. text, .csv, .npy, PNG/JPEG, a folder of them or a quoted glob"
    )
    parser.add_argument("--topic", help="input topic (default: PIXELWATCH_INPUT_TOPIC)")
    parser.add_argument("--bootstrap", help="Kafka servers (default: PIXELWATCH_BOOTSTRAP)")
    parser.add_argument(
        "--count", type=int, help="images to send, cycling the file (default: each once)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="images per second (0: as fast as possible)"
    )
    parser.add_argument("--model", type=Path, help="take the image size from this model")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--height", type=int, default=8)
    parser.add_argument(
        "--id-prefix", help="message ids are PREFIX-N (default: file name + run id)"
    )
    add_input_options(parser)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="json (default), u8 (one byte per pixel) or bits (one bit per pixel, binary images)",
    )
    parser.add_argument(
        "--per-message",
        type=int,
        default=1,
        metavar="N",
        help="images per message (default 1); a binary message with N images names them "
        "ID:0..ID:N-1 after its first image's id",
    )


FORMATS = ("json", "u8", "bits")
Message = tuple[bytes, bytes, list[tuple[str, bytes]] | None]


def encode(pixels: Pixels, ident: str, ts_ms: int) -> bytes:
    """One input message, as the worker's ImageMessage schema describes it."""
    return orjson.dumps(
        {"id": ident, "pixels": pixels, "ts": ts_ms}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def encode_messages(rows: Pixels, ids: list[str], ts_ms: int, fmt: str = "json") -> Message:
    """One message carrying `rows` (images named `ids`): key, value and headers."""
    key = ids[0].encode()
    if fmt == "json":
        if len(ids) == 1:
            return key, encode(rows[0], ids[0], ts_ms), None
        images = [{"id": i, "pixels": r, "ts": ts_ms} for i, r in zip(ids, rows, strict=True)]
        value = orjson.dumps({"images": images}, option=orjson.OPT_SERIALIZE_NUMPY)
        return key, value, None
    if fmt == "u8":
        value = np.round(np.clip(rows, 0.0, 1.0) * 255).astype(np.uint8).tobytes()
    else:
        value = np.packbits(np.asarray(rows) >= 0.5, axis=1).tobytes()
    return key, value, [(HEADER_FORMAT, fmt.encode()), (HEADER_ID, key)]


async def produce(
    settings: Settings,
    images: Pixels,
    ids: list[str],
    *,
    rate: float = 0.0,
    topic: str | None = None,
    show_progress: bool = False,
    fmt: str = "json",
    per_message: int = 1,
) -> int:
    """Send images[i] with id ids[i] (cycling `images`); returns how many images Kafka
    acknowledged. `rate` is in images per second."""
    producer = AIOKafkaProducer(**client_options(settings), linger_ms=5, acks="all")
    target = topic or settings.input_topic
    await _connect(producer, settings, target)
    pending: list[asyncio.Future[object]] = []
    started = time.monotonic()
    try:
        with Progress(disable=not show_progress, transient=True) as progress:
            task = progress.add_task(f"producing to {target}", total=len(ids))
            for first in range(0, len(ids), per_message):
                if rate > 0:
                    # Pace against the schedule, not per message, so rates stay accurate.
                    ahead = started + first / rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                group = ids[first : first + per_message]
                rows = images[np.arange(first, first + len(group)) % len(images)]
                key, value, headers = encode_messages(rows, group, int(time.time() * 1000), fmt)
                future = await producer.send(target, value=value, key=key, headers=headers)
                pending.append(future)
                if len(pending) * per_message >= 1000:
                    await asyncio.gather(*pending)
                    progress.advance(task, len(pending) * per_message)
                    pending.clear()
            await asyncio.gather(*pending)
            progress.advance(task, len(pending) * per_message)
    finally:
        await producer.stop()
    return len(ids)


async def _connect(producer: AIOKafkaProducer, settings: Settings, topic: str) -> None:
    """Start `producer`, or say in one line why not: no broker, refused, or no such topic."""
    try:
        with quiet_bootstrap():
            await producer.start()
    except KafkaConnectionError:
        await producer.stop()
        raise await unavailable(settings, "no server answered") from None
    # The broker creates no topic on demand (and should not): without this check a send
    # would wait for the topic's metadata until it times out.
    metadata = await producer.client.fetch_all_metadata()
    if topic not in metadata.topics():
        await producer.stop()
        raise PixelwatchError(
            f"topic {topic} does not exist on {settings.bootstrap}; a worker creates its "
            "topics when it starts (or create it yourself)"
        )


def run(args: argparse.Namespace) -> int:
    if args.rate < 0:
        raise PixelwatchError(f"--rate {args.rate:g} is negative (0 sends as fast as possible)")
    if args.count is not None and args.count < 1:
        raise PixelwatchError("--count must be at least 1")
    if args.per_message < 1:
        raise PixelwatchError("--per-message must be at least 1")
    overrides = {k: v for k, v in {"bootstrap": args.bootstrap}.items() if v}
    settings = load_settings(**overrides)
    use_level(settings.log_level)
    shape = load_model(args.model).shape if args.model else ImageShape(args.width, args.height)
    images = read_images(args.path, shape, binarize=args.binarize, skip_bad=args.skip_bad)
    report_skipped(images.skipped, sys.stderr)
    count = args.count if args.count is not None else len(images)
    if count < 1:
        raise PixelwatchError(f"{args.path}: no images to send")
    if args.format == "bits" and not np.isin(images.pixels, (0.0, 1.0)).all():
        raise PixelwatchError(f"{args.path}: --format bits needs binary images (0 or 1 only)")
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
            fmt=args.format,
            per_message=args.per_message,
        )
    )
    elapsed = time.monotonic() - started
    print(
        f"sent {sent} images to {args.topic or settings.input_topic} in {elapsed:.1f}s "
        f"({sent / max(elapsed, 1e-9):,.0f}/s), ids {prefix}-0..{count - 1}"
    )
    return 0
