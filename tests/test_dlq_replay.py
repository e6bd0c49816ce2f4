"""`pixelwatch dlq replay` on the real broker: dead letters go back to the input topic with
their original key, value and headers, filtered and fixed as asked, and are scored again."""

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from conftest import StartWorker
from service.dataplane.loop import marker
from service.schemas import (
    HEADER_FAILED_AT,
    HEADER_MESSAGE,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
)
from worker_harness import WorkerTopics, consume_until, produce

pytestmark = pytest.mark.kafka

FIX_PIXELS = """\
import json

def transform(key, value, headers):
    doc = json.loads(value)
    doc["pixels"] = [min(1.0, max(0.0, p)) for p in doc["pixels"]]
    return key, json.dumps(doc).encode(), headers + [("fixed-by", b"replay")]
"""


def replay(bootstrap: str, topics: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELWATCH_")}
    env |= {"PIXELWATCH_BOOTSTRAP": bootstrap, **topics}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "dlq", "replay", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def image(ident: str, pixels: list[float]) -> bytes:
    return orjson.dumps({"id": ident, "pixels": pixels})


async def test_fixed_dead_letters_are_scored_after_a_replay_with_their_own_headers(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker, tmp_path: Path
) -> None:
    worker = start_worker()
    trace = [("trace-id", b"t-42")]
    await produce(
        kafka_bootstrap,
        topics.images,
        [
            (b"good", image("good", [0.0] * 64)),
            (b"too-bright", image("too-bright", [0.0] * 63 + [1.5]), trace),
            (b"broken", b"{not json"),
        ],
    )
    await consume_until(
        kafka_bootstrap, [topics.scores, topics.dlq],
        lambda r: len(r[topics.scores]) >= 1 and len(r[topics.dlq]) >= 2, alive=worker.alive,
    )  # fmt: skip
    fix = tmp_path / "fix.py"
    fix.write_text(FIX_PIXELS)

    done = replay(kafka_bootstrap, topics.env(), "--reason", "pixel_value", "--transform", str(fix))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"replayed 1 of 2 dead letters from {topics.dlq} to {topics.images} (1 filtered out, "
        "0 truncated (value replaced by a marker), 0 left out by the transform)"
    )
    records = await consume_until(
        kafka_bootstrap, [topics.scores, topics.images],
        lambda r: {s.key for s in r[topics.scores]} == {b"good", b"too-bright"},
        alive=worker.alive,
    )  # fmt: skip
    assert len(records[topics.images]) == 4  # the three sent, and one replayed
    [resent] = [r for r in records[topics.images] if ("fixed-by", b"replay") in r.headers]
    assert resent.key == b"too-bright"
    assert orjson.loads(resent.value)["pixels"][-1] == 1.0
    # The input's own header travels back; none of the dead letter's own do.
    assert list(resent.headers) == [*trace, ("fixed-by", b"replay")]
    assert worker.stop() == 0


def dead_letter(
    key: bytes, value: bytes, reason: str, at: str, extra: list[tuple[str, bytes]] | None = None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    headers = [
        *(extra or []),
        (HEADER_REASON, reason.encode()),
        (HEADER_MESSAGE, b"what was wrong"),
        (HEADER_TOPIC, b"images"),
        (HEADER_PARTITION, b"0"),
        (HEADER_OFFSET, b"7"),
        (HEADER_FAILED_AT, at.encode()),
    ]
    return key, value, headers


@pytest.fixture
async def dlq_topics(topic_factory: Callable[[int], Awaitable[str]]) -> dict[str, str]:
    """A fresh dead-letter topic (2 partitions) and input topic, as settings."""
    dlq, images = await topic_factory(2), await topic_factory(1)
    return {"PIXELWATCH_DLQ_TOPIC": dlq, "PIXELWATCH_INPUT_TOPIC": images}


async def test_filters_select_by_reason_time_and_id_and_a_dry_run_sends_nothing(
    kafka_bootstrap: str, dlq_topics: dict[str, str]
) -> None:
    dlq, images = dlq_topics["PIXELWATCH_DLQ_TOPIC"], dlq_topics["PIXELWATCH_INPUT_TOPIC"]
    at = "2026-11-27T08:00:00.000+00:00"  # the worker's header; --since reads Kafka's time
    await produce(kafka_bootstrap, dlq, [dead_letter(b"cam-1/a", b"{}", "schema", at)])
    await asyncio.sleep(1.5)
    since = datetime.now(UTC) - timedelta(seconds=0.5)
    await produce(
        kafka_bootstrap,
        dlq,
        [
            dead_letter(b"cam-1/b", b"{}", "schema", at),
            dead_letter(b"cam-2/c", b"{}", "schema", at),
            dead_letter(b"cam-1/d", b"[1]", "invalid_json", at),
            dead_letter(b"cam-1/e", marker(b"x" * 2000), "oversized", at),
        ],
    )
    args = ["--since", since.isoformat(), "--id-prefix", "cam-1/"]

    dry = replay(kafka_bootstrap, dlq_topics, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    # cam-1/a is older than --since, so not even read; cam-2/c has another prefix.
    assert dry.stdout.startswith(f"would replay 2 of 4 dead letters from {dlq} to {images} ")
    assert "(1 filtered out, 1 truncated (value replaced by a marker))" in dry.stdout

    done = replay(kafka_bootstrap, dlq_topics, *args, "--reason", "schema")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("replayed 1 of 4 dead letters")
    records = await consume_until(kafka_bootstrap, [images], lambda r: len(r[images]) >= 1)
    assert [(r.key, r.value, list(r.headers)) for r in records[images]] == [(b"cam-1/b", b"{}", [])]


async def test_a_failing_transform_sends_nothing_and_says_where_in_one_line(
    kafka_bootstrap: str, dlq_topics: dict[str, str], tmp_path: Path
) -> None:
    dlq, images = dlq_topics["PIXELWATCH_DLQ_TOPIC"], dlq_topics["PIXELWATCH_INPUT_TOPIC"]
    await produce(
        kafka_bootstrap,
        dlq,
        [dead_letter(f"k{i}".encode(), b"{}", "schema", "2026-11-27T08:00") for i in range(3)],
    )
    fragile = tmp_path / "fragile.py"
    fragile.write_text(
        textwrap.dedent("""\
        def transform(key, value, headers):
            if key == b"k2":
                raise ValueError("cannot fix k2")
            return key, value, headers
        """)
    )

    done = replay(kafka_bootstrap, dlq_topics, "--transform", str(fragile))

    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: transform failed on {dlq}[")
    assert line.endswith("ValueError: cannot fix k2; nothing was sent")
    records = await consume_until(kafka_bootstrap, [images], lambda r: True)
    assert records[images] == []
    itself = replay(kafka_bootstrap, dlq_topics, "--to", dlq)
    assert itself.returncode == 2
    assert itself.stderr == f"error: --to {dlq} is the dead-letter topic itself\n"


def test_a_missing_dead_letter_topic_is_one_line(kafka_bootstrap: str) -> None:
    topics = WorkerTopics()
    done = replay(kafka_bootstrap, topics.env(), "--dry-run")
    assert done.returncode == 2
    assert done.stderr == f"error: topic {topics.dlq} does not exist\n"
