"""`pixelwatch model`: publish, list, roll back, promote and watch models on the models topic.

    pixelwatch model push MODEL.onnx [--shadow] [--uri URI]
    pixelwatch model list [--json]
    pixelwatch model rollback VERSION
    pixelwatch model promote
    pixelwatch model discard
    pixelwatch model status [--suggest-threshold] [--json]

Every command reads the whole topic first (it is small: compaction keeps one record per
key), and checks a model with the workers' own validation before it publishes it, so a
mistake is reported here in one line rather than refused by every worker.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final, Literal

import orjson
from pydantic import ValidationError

from service.config import Settings, load_settings
from service.errors import PixelwatchError
from service.lifecycle.drift import SLOTS, Window, summarise
from service.lifecycle.registry import (
    TOPIC_CONFIG,
    ModelLocation,
    ModelRecord,
    Payload,
    Publication,
    RegistryError,
    TopicMissing,
    create_missing,
    fetch,
    publications,
    publish,
    read_topic,
    republications,
    sha256_of,
    tombstone,
)
from service.lifecycle.validate import Refused, validate
from service.lifecycle.window import changelog_topic
from service.observability.logs import use_level
from service.scoring.model import Model
from service.untrusted import clean

MAX_INLINE_BYTES: Final = 900_000
"""Largest graph sent inside a record: under the broker's default 1 MiB message limit with
room for the headers. A larger one needs --uri."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Kafka connection and names come from PIXELWATCH_* variables, as for the worker."
    )
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    push = commands.add_parser("push", help="publish a model: live, or --shadow")
    push.add_argument("path", type=Path, help="the model (.onnx) from `pixelwatch train`")
    push.add_argument(
        "--shadow", action="store_true", help="score beside the live model instead of it"
    )
    push.add_argument(
        "--uri",
        help="where workers fetch the graph (file:// or http(s)://) instead of the record "
        f"carrying it; needed above --max-inline-bytes ({MAX_INLINE_BYTES})",
    )
    push.add_argument("--max-inline-bytes", type=int, default=MAX_INLINE_BYTES)

    listing = commands.add_parser("list", help="every published version, newest first")
    listing.add_argument("--json", action="store_true", help="one JSON array")

    rollback = commands.add_parser("rollback", help="make a published version live again")
    rollback.add_argument("version", help="a version (as `list` shows it) or a sha256 prefix")

    commands.add_parser("promote", help="make the shadow model live")
    commands.add_parser("discard", help="stop shadow scoring (the shadow model stays listed)")

    status = commands.add_parser("status", help="live and shadow model, drift and anomaly rate")
    status.add_argument(
        "--suggest-threshold",
        action="store_true",
        help="also show the threshold that would flag the model's calibrated false-positive "
        "rate of the live window (never applied by anyone)",
    )
    status.add_argument("--json", action="store_true", help="one JSON object")

    status.add_argument(
        "--group-id", help="the workers' consumer group (default: PIXELWATCH_GROUP_ID)"
    )
    for sub in commands.choices.values():
        sub.add_argument("--bootstrap", help="Kafka servers (default: PIXELWATCH_BOOTSTRAP)")
        sub.add_argument("--name", help="model name (default: PIXELWATCH_MODEL_NAME)")
        sub.add_argument("--topic", help="models topic (default: PIXELWATCH_MODELS_TOPIC)")


def settings_of(args: argparse.Namespace) -> Settings:
    overrides = {
        field: value
        for field, value in (
            ("bootstrap", args.bootstrap),
            ("model_name", args.name),
            ("models_topic", args.topic),
            ("group_id", getattr(args, "group_id", None)),
        )
        if value is not None
    }
    return load_settings(**overrides)


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    use_level(settings.log_level)
    action = {
        "push": push,
        "list": listing,
        "rollback": rollback,
        "promote": promote,
        "discard": discard,
        "status": status,
    }[args.action]
    return asyncio.run(action(settings, args))


# ---- reading the topic ----


class State:
    """What the models topic says about one model name."""

    def __init__(self, records: list[ModelRecord], name: str) -> None:
        mine = [r for r in records if r.name == name]
        lives = [r for r in mine if r.role == "live" and not r.tombstone]
        self.live = lives[-1] if lives else None
        shadows = [r for r in mine if r.role == "shadow"]
        self.shadow = shadows[-1] if shadows and not shadows[-1].tombstone else None
        newest: dict[str, ModelRecord] = {}
        for record in mine:
            if record.role == "archive" and not record.tombstone:
                newest[record.key] = record
        self.versions = sorted(newest.values(), key=_created, reverse=True)


def _created(record: ModelRecord) -> str:
    return str(record.metadata.get("created_at", ""))


async def read_models(settings: Settings) -> list[ModelRecord]:
    try:
        return await read_topic(settings, settings.models_topic, wait=2.0)
    except TopicMissing:
        return []  # nothing published yet: `push` creates the topic


async def read_state(settings: Settings) -> State:
    return State(await read_models(settings), settings.model_name)


# ---- push ----


async def push(settings: Settings, args: argparse.Namespace) -> int:
    path: Path = args.path
    data = await asyncio.to_thread(_read, path)
    model = _checked(data, str(path))
    await create_missing(settings, {settings.models_topic: TOPIC_CONFIG}, wait=10.0)
    state = await read_state(settings)
    where = f"{settings.models_topic}: model {settings.model_name}"
    if state.live is not None:
        size = _size(state.live)
        if size is not None and size != (model.shape.width, model.shape.height):
            raise PixelwatchError(
                f"{path}: it takes {model.shape} images, but the live model of {where} takes "
                f"{size[0]}x{size[1]}: workers would refuse it"
            )
    role: Literal["live", "shadow"] = "shadow" if args.shadow else "live"
    if state.live is not None and state.live.sha256 == model.sha256:
        if args.shadow:
            raise PixelwatchError(f"{path}: it is the live model of {where}; nothing to shadow")
        print(f"{model.version} ({model.sha256[:12]}) is already live on {where}")
        return 0
    value: bytes = data
    payload: Payload = "onnx"
    if args.uri:
        location = ModelLocation(uri=args.uri, sha256=model.sha256, size=len(data))
        fetched = await asyncio.to_thread(fetch, location)
        if sha256_of(fetched) != model.sha256:
            raise PixelwatchError(f"{args.uri}: holds other bytes than {path}")
        value, payload = location.model_dump_json().encode(), "uri"
    elif len(data) > args.max_inline_bytes:
        raise PixelwatchError(
            f"{path}: {len(data)} bytes, over --max-inline-bytes {args.max_inline_bytes}: put "
            "it where the workers can read it and give --uri"
        )
    records = publications(
        settings.model_name,
        value,
        payload,
        model=model,
        size=len(data),
        role=role,
        action="push",
    )
    await publish(settings, records)
    if args.shadow:
        what, then = "as the shadow of", "score with it beside the live model"
    else:
        what, then = "as live on", "swap it in at their next batch"
    print(
        f"published {model.version} ({model.sha256[:12]}) {what} {where}; workers validate "
        f"it, then {then}"
    )
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PixelwatchError(f"{path}: model file not found") from None
    except OSError as exc:
        raise PixelwatchError(f"{path}: cannot read it ({exc.strerror})") from None


def _checked(data: bytes, source: str) -> Model:
    with tempfile.TemporaryDirectory(prefix="pixelwatch-") as cache:
        try:
            model = validate(data, sha256=None, cache=Path(cache)).model
        except Refused as exc:
            raise PixelwatchError(f"{source}: refused ({exc.reason}): {exc.text}") from None
        assert model.sha256  # hashed (and cached) while its file still exists
        return model


def _size(record: ModelRecord) -> tuple[int, int] | None:
    metadata = record.metadata
    width, height = metadata.get("width"), metadata.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return width, height
    return None


# ---- list ----


async def listing(settings: Settings, args: argparse.Namespace) -> int:
    records = await read_models(settings)
    names = sorted({r.name for r in records})
    rows: list[dict[str, Any]] = []
    for name in names:
        state = State(records, name)
        for record in state.versions:
            roles = []
            if state.live is not None and state.live.sha256 == record.sha256:
                roles.append("live")
            if state.shadow is not None and state.shadow.sha256 == record.sha256:
                roles.append("shadow")
            metadata = record.metadata
            rows.append(
                {
                    "name": name,
                    "version": record.version,
                    "sha256": record.sha256,
                    "role": ",".join(roles),
                    "size": record.size,
                    "payload": record.payload,
                    "created_at": metadata.get("created_at"),
                    "mode": metadata.get("mode"),
                    "metric": metadata.get("metric"),
                    "threshold": metadata.get("threshold"),
                    "image": _image(metadata),
                    "published_at": record.published_at,
                    "published_by": record.published_by,
                    "activated_at": record.activated_at,
                }
            )
    if args.json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not rows:
        print(f"{settings.models_topic}: no model published yet")
        return 0
    header = ("NAME", "VERSION", "SHA256", "ROLE", "SIZE", "IMAGE", "THRESHOLD", "PUBLISHED")
    table = [header] + [
        (
            clean(str(row["name"]), 40),
            clean(str(row["version"]), 40),
            clean(str(row["sha256"]), 64)[:12],
            row["role"] or "-",
            _bytes(row["size"]),
            clean(str(row["image"]), 20),
            _threshold(row),
            clean(f"{row['published_at']} by {row['published_by']}", 80),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0


def _image(metadata: dict[str, Any]) -> str:
    mode = metadata.get("mode", "?")
    return f"{metadata.get('width', '?')}x{metadata.get('height', '?')} {mode}"


def _threshold(row: dict[str, Any]) -> str:
    threshold = row["threshold"]
    if isinstance(threshold, float | int):
        return f"{row['metric']} < {threshold:.4g}"
    return "?"


def _bytes(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / 1000:.1f} kB" if size < 1_000_000 else f"{size / 1e6:.1f} MB"


# ---- rollback, promote, discard ----


async def rollback(settings: Settings, args: argparse.Namespace) -> int:
    state = await read_state(settings)
    wanted = args.version.strip().lower()
    matches = [
        r
        for r in state.versions
        if r.version.lower() == wanted or (len(wanted) >= 6 and r.sha256.startswith(wanted))
    ]
    where = f"{settings.models_topic}: model {settings.model_name}"
    if not matches:
        raise PixelwatchError(
            f"{where} has no version {clean(args.version, 80)} (see `pixelwatch model list`)"
        )
    if len(matches) > 1:
        hashes = ", ".join(r.sha256[:12] for r in matches)
        raise PixelwatchError(
            f"{where}: version {clean(args.version, 80)} is ambiguous ({hashes}); "
            "give a sha256 prefix"
        )
    [record] = matches
    if state.live is not None and state.live.sha256 == record.sha256:
        print(f"{record.describe()} is already live on {where}")
        return 0
    _checked_record(record)
    await publish(
        settings, republications(settings.model_name, record, role="live", action="rollback")
    )
    print(f"rolled {where} back to {record.describe()}; workers swap at their next batch")
    return 0


async def promote(settings: Settings, args: argparse.Namespace) -> int:
    state = await read_state(settings)
    where = f"{settings.models_topic}: model {settings.model_name}"
    if state.shadow is None:
        raise PixelwatchError(f"{where} has no shadow model to promote")
    records: list[Publication] = []
    if state.live is None or state.live.sha256 != state.shadow.sha256:
        records += republications(settings.model_name, state.shadow, role="live", action="promote")
    records.append(tombstone(settings.model_name))
    await publish(settings, records)
    print(f"promoted {state.shadow.describe()} to live on {where}; shadow scoring stops")
    return 0


async def discard(settings: Settings, args: argparse.Namespace) -> int:
    state = await read_state(settings)
    where = f"{settings.models_topic}: model {settings.model_name}"
    if state.shadow is None:
        raise PixelwatchError(f"{where} has no shadow model to discard")
    await publish(settings, [tombstone(settings.model_name)])
    print(f"discarded the shadow {state.shadow.describe()} of {where}")
    return 0


def _checked_record(record: ModelRecord) -> None:
    try:
        data = record.graph()
    except RegistryError as exc:
        raise PixelwatchError(f"{record.describe()}: {exc}") from None
    if sha256_of(data) != record.sha256:
        raise PixelwatchError(f"{record.describe()}: its bytes do not match its sha256")
    _checked(data, record.describe())


# ---- status ----


async def status(settings: Settings, args: argparse.Namespace) -> int:
    state = await read_state(settings)
    windows = await _windows(settings)
    now = time.time()
    report: dict[str, Any] = {
        "name": settings.model_name,
        "topic": settings.models_topic,
        "live": _brief(state.live),
        "shadow": _brief(state.shadow),
        "window": None,
    }
    live = state.live
    window = windows.get(live.sha256) if live else None
    if window is None and live is None and windows:
        # Nothing published: the workers score with their model file. Its window is the one
        # updated last.
        window = max(windows.values(), key=lambda w: max(w.workers.values(), default=0.0))
    if window is not None:
        # Everything the window holds, however few images (the text says when they are few).
        summary = summarise(window, now, 1)
        seconds = window.slot_seconds * SLOTS
        report["window"] = {
            "version": window.model.version,
            "sha256": window.model.sha256,
            "seconds": seconds,
            "images": summary.images,
            "workers": sorted(w for w, at in window.workers.items() if at > now - seconds),
            "updated": max(window.workers.values(), default=None),
            "anomaly_rate": summary.anomaly_rate,
            "fpr": window.model.fpr,
            "drift": summary.drift,
            "critical": summary.critical,
            "reference": window.model.reference_source,
            "reference_images": sum(window.model.reference or []) or None,
            "min_images": settings.drift_min_images,
            "threshold": window.model.threshold,
            "shadow": {sha: tally.model_dump() for sha, tally in summary.shadow.items()},
        }
        if args.suggest_threshold:
            report["window"]["suggested_threshold"] = summary.suggested_threshold
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"model {clean(settings.model_name)} on {settings.models_topic}")
    print(f"  live      {_line(state.live)}")
    print(f"  shadow    {_line(state.shadow)}")
    info = report["window"]
    if info is None:
        group = settings.group_id
        print(f"  window    no data yet (no worker of group {group} reported on the live model)")
        return 0
    age = f", updated {now - info['updated']:.0f} s ago" if info["updated"] else ""
    workers = ", ".join(clean(w, 60) for w in info["workers"]) or "none recently"
    if live is None:
        model = f"{clean(info['version'], 64)} ({clean(info['sha256'], 64)[:12]})"
        print(f"  scoring   {model}, from the workers' model file")
    print(f"  window    last {info['seconds']:.0f} s: {info['images']:,} images ({workers}){age}")
    if info["anomaly_rate"] is not None:
        fpr = info["fpr"]
        calibrated = f" (on normal images at export: {fpr:.1%})" if fpr is not None else ""
        print(f"  anomalies {info['anomaly_rate']:.1%} of the window{calibrated}")
    if info["drift"] is not None:
        few = (
            f"; few images: workers report it from {info['min_images']}"
            if info["images"] < info["min_images"]
            else ""
        )
        print(
            f"  drift     {info['drift']:.3f} KS distance to {info['reference_images']} "
            f"{info['reference']} normal images (1% critical value {info['critical']:.3f}{few})"
        )
    else:
        print("  drift     no reference (the model has no similarity histogram)")
    for sha, tally in info["shadow"].items():
        if state.shadow is None or sha != state.shadow.sha256 or not tally["images"]:
            continue
        print(
            f"  agreement {tally['agree'] / tally['images']:.1%} of {tally['images']:,} images "
            f"(flagged: live {tally['live_flagged']:,}, shadow {tally['shadow_flagged']:,})"
        )
    if args.suggest_threshold:
        suggested = info.get("suggested_threshold")
        if suggested is None:
            print("  suggested none (no calibrated false-positive rate, or too few images)")
        else:
            print(
                f"  suggested threshold {suggested:.2f} would flag {info['fpr']:.1%} of the "
                f"window (live threshold {info['threshold']:.4g}); not applied"
            )
    return 0


async def _windows(settings: Settings) -> dict[str, Window]:
    try:
        records = await read_topic(settings, changelog_topic(settings), wait=2.0)
    except TopicMissing:
        return {}  # no worker of this group has started yet
    windows: dict[str, Window] = {}
    for record in records:
        if record.value is None:
            windows.pop(record.key, None)
            continue
        try:
            windows[record.key] = Window.model_validate_json(record.value)
        except ValidationError:
            continue
    return windows


def _brief(record: ModelRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "version": record.version,
        "sha256": record.sha256,
        "since": record.activated_at or record.published_at,
        "action": record.action,
        "published_by": record.published_by,
    }


def _line(record: ModelRecord | None) -> str:
    if record is None:
        return "none"
    since = record.activated_at or record.published_at
    return clean(
        f"{record.version} ({record.sha256[:12]}) since {since}, {record.action} by "
        f"{record.published_by}",
        200,
    )
