"""`pixelwatch dlq replay`: send dead letters back to the input topic, once their cause is fixed.

    pixelwatch dlq replay --reason pixel_value --since 2026-11-27T10:00:00Z
    pixelwatch dlq replay --id-prefix cam-7/ --transform fix.py --dry-run

A transform is a Python file defining `transform(key, value, headers)`, which returns the
(key, value, headers) to send, or None to leave that dead letter out.
"""

import argparse
from datetime import datetime
from pathlib import Path

from service.config import load_settings
from service.errors import PixelwatchError
from service.kafka.replay import Filter, load_transform, read_dead_letters, send
from service.observability.logs import use_level
from service.schemas import DeadLetterReason


def configure_parser(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    replay = actions.add_parser(
        "replay",
        help="send dead letters back to the input topic",
        description="Send dead letters (their original key, value and headers) back to the "
        "input topic. Every filter given must match. Nothing is sent when a transform fails.",
    )
    replay.add_argument("--bootstrap", help="Kafka servers (default: PIXELWATCH_BOOTSTRAP)")
    replay.add_argument("--dlq-topic", help="dead-letter topic (default: PIXELWATCH_DLQ_TOPIC)")
    replay.add_argument("--to", help="topic to send to (default: PIXELWATCH_INPUT_TOPIC)")
    replay.add_argument(
        "--reason",
        action="append",
        choices=[r.value for r in DeadLetterReason],
        help="only dead letters with this reason (repeat for several)",
    )
    replay.add_argument(
        "--since",
        help="only dead letters written at or after this ISO 8601 time (their Kafka "
        "timestamp), e.g. 2026-11-27T10:00:00Z (without a zone: local time)",
    )
    replay.add_argument("--id-prefix", help="only images whose id (the key) starts with this")
    replay.add_argument(
        "--transform",
        type=Path,
        metavar="FILE.py",
        help="a Python file defining transform(key, value, headers) -> (key, value, headers) "
        "or None (leave it out)",
    )
    replay.add_argument("--dry-run", action="store_true", help="count, send nothing")


def parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PixelwatchError(
            f"--since {text!r} is not an ISO 8601 time such as 2026-11-27T10:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


def run(args: argparse.Namespace) -> int:
    wanted = Filter(frozenset(args.reason or ()), parse_since(args.since), args.id_prefix)
    transform = load_transform(args.transform) if args.transform else None
    overrides = {"bootstrap": args.bootstrap, "dlq_topic": args.dlq_topic}
    settings = load_settings(**{k: v for k, v in overrides.items() if v})
    use_level(settings.log_level)
    target = args.to or settings.input_topic
    if target == settings.dlq_topic:
        raise PixelwatchError(f"--to {target} is the dead-letter topic itself")
    replay = read_dead_letters(settings, wanted, transform)
    if not args.dry_run and replay.records:
        replay.sent = send(settings, target, replay.records)
    skipped = [
        f"{replay.filtered_out} filtered out",
        f"{replay.truncated} truncated (value replaced by a marker)",
    ]
    if transform is not None:
        skipped.append(f"{replay.dropped} left out by the transform")
    verb = "would replay" if args.dry_run else "replayed"
    count = len(replay.records) if args.dry_run else replay.sent
    print(
        f"{verb} {count} of {replay.read} dead letters from {settings.dlq_topic} to {target} "
        f"({', '.join(skipped)})"
    )
    return 0
