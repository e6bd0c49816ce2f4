"""Models swapped while images flow, on the real broker: through the models topic and through
the model file, in shadow and promoted, and refused when damaged; the drift window kept in a
faust table across a restart."""

import asyncio
import contextlib
import functools
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import ConsumerRecord

from conftest import StartWorker
from service.config import Settings
from service.lifecycle.registry import publications, publish
from service.samples import SEED_TEST, SEED_TRAIN
from service.schemas import HEADER_MODEL_SHA256, HEADER_MODEL_VERSION
from service.scoring.images import read_images
from service.scoring.model import Model, load_model
from worker_harness import (
    WorkerProcess,
    WorkerTopics,
    consume_until,
    metric_value,
    pixelwatch_model,
    produce,
)

pytestmark = pytest.mark.kafka

Records = dict[str, list[ConsumerRecord]]


@pytest.fixture(scope="module")
def v1(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


@pytest.fixture(scope="module")
def v2(candidate_model_path: Path, v1: Model) -> Model:
    model = load_model(candidate_model_path)
    assert model.version != v1.version
    return model


@functools.cache
def pool() -> np.ndarray:
    """Read once; read-only, since every caller shares the one array."""
    rng = np.random.default_rng(12)
    normal = np.concatenate([read_images(SEED_TRAIN).pixels, read_images(SEED_TEST).pixels])
    rows = np.concatenate([np.tile(normal, (3, 1)), (rng.random((6, 64)) < 0.4)]).astype(np.float32)
    rows.setflags(write=False)
    return rows


def images(start: int, count: int, prefix: str = "m") -> list[tuple[bytes, bytes]]:
    rows = pool()
    option = orjson.OPT_SERIALIZE_NUMPY
    return [
        (
            f"{prefix}{i}".encode(),
            orjson.dumps({"id": f"{prefix}{i}", "pixels": rows[i % len(rows)]}, option=option),
        )
        for i in range(start, start + count)
    ]


class Stream:
    """Sends images in small waves until stopped; `sent` counts them."""

    def __init__(self, bootstrap: str, topic: str, prefix: str = "m") -> None:
        self.bootstrap, self.topic, self.prefix = bootstrap, topic, prefix
        self.sent = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            await produce(self.bootstrap, self.topic, images(self.sent, 100, self.prefix))
            self.sent += 100
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.2)

    async def stop(self) -> int:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.sent


def version_runs(records: list[ConsumerRecord]) -> dict[int, list[str]]:
    """Per input partition, the model versions of its outputs in offset order, runs merged."""
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for record in records:
        body = orjson.loads(record.value)
        headers = dict(record.headers)
        # The header and the body name the same model, always.
        assert headers[HEADER_MODEL_VERSION].decode() == body["model"]["version"]
        assert headers[HEADER_MODEL_SHA256].decode() == body["model"]["sha256"]
        by_partition[body["source"]["partition"]].append(
            (body["source"]["offset"], body["model"]["version"])
        )
    runs: dict[int, list[str]] = {}
    for partition, pairs in by_partition.items():
        merged: list[str] = []
        for _, version in sorted(pairs):
            if not merged or merged[-1] != version:
                merged.append(version)
        runs[partition] = merged
    return runs


async def wait_metric(
    worker: WorkerProcess,
    name: str,
    check: Callable[[float | None], bool],
    labels: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> float | None:
    deadline = time.monotonic() + timeout
    while True:
        value = metric_value(worker, name, **(labels or {}))
        if check(value):
            return value
        assert worker.alive(), worker.output()[-3000:]
        assert time.monotonic() < deadline, f"{name}{labels} is {value}"
        await asyncio.sleep(0.3)


def info(model: Model) -> dict[str, str]:
    """The labels of pixelwatch_model_info for `model` (the seed models' metric and mode)."""
    return {"version": model.version, "sha256": model.sha256, "metric": "hamming", "mode": "binary"}


def is_one(value: float | None) -> bool:
    return value == 1.0


def scored_ids(topic: str) -> Callable[[Records], set[str]]:
    return lambda records: {r.key.decode() for r in records[topic]}


async def test_a_model_pushed_mid_stream_takes_over_at_a_batch_and_a_corrupt_one_is_refused(
    kafka_bootstrap: str,
    topics: WorkerTopics,
    start_worker: StartWorker,
    v1: Model,
    v2: Model,
) -> None:
    await pixelwatch_model(kafka_bootstrap, topics, "push", str(v1.path))
    # No model file: the worker starts from the topic.
    worker = start_worker(PIXELWATCH_MODEL="", PIXELWATCH_BATCH_SIZE="20")
    worker.wait_serving()
    stream = Stream(kafka_bootstrap, topics.images)
    stream.start()
    ids = scored_ids(topics.scores)
    await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(ids(r)) >= 600, alive=worker.alive
    )
    await pixelwatch_model(kafka_bootstrap, topics, "push", str(v2.path))
    await wait_metric(worker, "pixelwatch_model_info", is_one, info(v2))
    # v3: the record declares v1's hash, the bytes are damaged on the way.
    damaged = v1.path.read_bytes()[:-200]
    settings = Settings(bootstrap=kafka_bootstrap, models_topic=topics.models)
    await publish(
        settings,
        publications(
            "default", damaged, "onnx", model=v1, size=len(damaged), role="live", action="push"
        ),
    )
    await wait_metric(worker, "pixelwatch_model_reloads_total", is_one, {"result": "sha256"})
    before_end = stream.sent
    await asyncio.sleep(1.0)  # images keep coming after the refusal
    sent = await stream.stop()
    assert sent > before_end
    records = await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(ids(r)) >= sent,
        timeout=120, alive=worker.alive,
    )  # fmt: skip

    assert ids(records) == {f"m{i}" for i in range(sent)}, "nothing is lost"
    runs = version_runs(records[topics.scores])
    assert sorted(runs) == [0, 1, 2, 3]
    for partition, versions in runs.items():
        # Every output before the swap point names v1, every one after it v2; v3 never.
        assert versions == [v1.version, v2.version], (partition, versions)
    assert metric_value(worker, "pixelwatch_model_reloads_total", result="ok") == 2.0
    refusals = [line for line in worker.output().splitlines() if "refused (sha256)" in line]
    assert len(refusals) == 1
    assert f"{v2.version} ({v2.sha256[:12]}) keeps scoring" in refusals[0]

    # A worker that starts now refuses v3 too and takes v2, the newest valid model.
    late = start_worker(PIXELWATCH_MODEL="", PIXELWATCH_GROUP_ID=f"late-{topics.run}")
    late.wait_serving()
    await wait_metric(late, "pixelwatch_model_info", is_one, info(v2))
    assert metric_value(late, "pixelwatch_model_reloads_total", result="sha256") == 1.0
    assert late.stop() == 0
    assert worker.stop() == 0


async def test_a_changed_model_file_is_reloaded_and_a_broken_one_refused(
    kafka_bootstrap: str,
    topics: WorkerTopics,
    start_worker: StartWorker,
    v1: Model,
    v2: Model,
    tmp_path: Path,
) -> None:
    mounted = tmp_path / "volume" / "model.onnx"
    mounted.parent.mkdir()
    shutil.copyfile(v1.path, mounted)
    worker = start_worker(
        PIXELWATCH_MODEL=str(mounted),
        PIXELWATCH_MODEL_POLL_INTERVAL="0.3",
        PIXELWATCH_PARTITIONS="1",
    )
    worker.wait_serving()
    await produce(kafka_bootstrap, topics.images, images(0, 50))
    ids = scored_ids(topics.scores)
    await consume_until(kafka_bootstrap, [topics.scores], lambda r: len(ids(r)) >= 50)

    # A volume update: the new file appears whole (written aside, then renamed).
    staged = mounted.with_suffix(".new")
    shutil.copyfile(v2.path, staged)
    os.replace(staged, mounted)
    await wait_metric(worker, "pixelwatch_model_info", is_one, info(v2))
    mounted.write_bytes(b"half a model")
    await wait_metric(worker, "pixelwatch_model_reloads_total", is_one, {"result": "corrupt"})
    await produce(kafka_bootstrap, topics.images, images(50, 50))
    records = await consume_until(kafka_bootstrap, [topics.scores], lambda r: len(ids(r)) >= 100)
    runs = version_runs(records[topics.scores])
    assert runs == {0: [v1.version, v2.version]}
    last = [orjson.loads(r.value) for r in records[topics.scores]][-50:]
    assert {body["model"]["version"] for body in last} == {v2.version}
    assert worker.stop() == 0


async def test_a_shadow_scores_every_image_beside_the_live_model_until_promoted(
    kafka_bootstrap: str,
    topics: WorkerTopics,
    start_worker: StartWorker,
    v1: Model,
    v2: Model,
) -> None:
    await pixelwatch_model(kafka_bootstrap, topics, "push", str(v1.path))
    await pixelwatch_model(kafka_bootstrap, topics, "push", str(v2.path), "--shadow")
    worker = start_worker(PIXELWATCH_MODEL="", PIXELWATCH_DRIFT_INTERVAL="0.5")
    worker.wait_serving()
    await wait_metric(
        worker, "pixelwatch_shadow_model_info", is_one, {"version": v2.version, "sha256": v2.sha256}
    )
    sent = images(0, 300)
    await produce(kafka_bootstrap, topics.images, sent)
    records = await consume_until(
        kafka_bootstrap, [topics.scores, topics.shadow],
        lambda r: len(r[topics.scores]) >= 300 and len(r[topics.shadow]) >= 300,
        alive=worker.alive,
    )  # fmt: skip
    live = {r.key: orjson.loads(r.value) for r in records[topics.scores]}
    shadow = {r.key: orjson.loads(r.value) for r in records[topics.shadow]}
    assert shadow.keys() == live.keys() == {key for key, _ in sent}
    expected = v2.score(np.stack([orjson.loads(v)["pixels"] for _, v in sent])).anomaly
    agree = 0
    for (key, _), flagged in zip(sent, expected.tolist(), strict=True):
        verdict = shadow[key]
        assert verdict["live"]["anomaly"] == live[key]["anomaly"]
        assert verdict["live"]["similarity"] == live[key]["similarity"]
        assert verdict["shadow"]["anomaly"] == flagged
        assert verdict["shadow"]["version"] == v2.version
        agree += verdict["agree"]
    counts = {
        verdict: metric_value(worker, "pixelwatch_shadow_verdicts_total", verdict=verdict)
        for verdict in ("both_normal", "both_anomaly", "live_only", "shadow_only")
    }
    assert sum(v or 0 for v in counts.values()) == 300
    assert (counts["both_normal"] or 0) + (counts["both_anomaly"] or 0) == agree
    # Negative buckets: Prometheus histograms then have no _count; +Inf counts everything.
    difference = "pixelwatch_shadow_similarity_difference_bucket"
    assert metric_value(worker, difference, le="+Inf") == 300

    await pixelwatch_model(kafka_bootstrap, topics, "promote")
    await wait_metric(worker, "pixelwatch_model_info", is_one, info(v2))
    await wait_metric(
        worker,
        "pixelwatch_shadow_model_info",
        lambda v: v is None,
        {"version": v2.version, "sha256": v2.sha256},
    )
    await produce(kafka_bootstrap, topics.images, images(300, 100))
    records = await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(r[topics.scores]) >= 400
    )
    later = [orjson.loads(r.value) for r in records[topics.scores]]
    promoted = [s for s in later if s["id"] in {f"m{i}" for i in range(300, 400)}]
    assert {s["model"]["version"] for s in promoted} == {v2.version}
    status = await pixelwatch_model(kafka_bootstrap, topics, "status")
    assert f"live      {v2.version}" in status and "shadow    none" in status
    assert worker.stop() == 0


async def test_the_drift_window_survives_a_restart_and_status_reports_it(
    kafka_bootstrap: str,
    topics: WorkerTopics,
    start_worker: StartWorker,
    v1: Model,
) -> None:
    knobs = {
        "PIXELWATCH_DRIFT_INTERVAL": "0.5",
        "PIXELWATCH_DRIFT_MIN_IMAGES": "10",
        "PIXELWATCH_SUGGEST_THRESHOLD": "true",
    }
    first = start_worker(**knobs)
    first.wait_serving()
    await produce(kafka_bootstrap, topics.images, images(0, 200))
    labels = {"version": v1.version}
    await wait_metric(first, "pixelwatch_drift_window_images", lambda v: v == 200.0, labels)
    drift = metric_value(first, "pixelwatch_similarity_drift", **labels)
    rate = metric_value(first, "pixelwatch_anomaly_rate", **labels)
    expected_rate = float(v1.score(pool()[np.arange(200) % len(pool())]).anomaly.mean())
    assert rate == pytest.approx(expected_rate)
    # The seed model's reference is its two training images, which it reconstructs
    # perfectly; a third of the stream is those images, the rest lies below them.
    assert drift is not None and 0.5 < drift < 1.0
    assert metric_value(first, "pixelwatch_suggested_threshold", **labels) is not None
    assert first.stop() == 0  # a restart, as in a rollout: the table's changelog keeps the window

    second = start_worker(**knobs)
    second.wait_serving()
    await produce(kafka_bootstrap, topics.images, images(200, 100))
    await wait_metric(second, "pixelwatch_drift_window_images", lambda v: v == 300.0, labels)
    status = await pixelwatch_model(
        kafka_bootstrap, topics, "status", "--json", "--suggest-threshold"
    )
    window = orjson.loads(status)["window"]
    # Nothing is published: status shows the window of the workers' model file.
    assert (window["version"], window["sha256"]) == (v1.version, v1.sha256)
    assert window["images"] == 300 and len(window["workers"]) == 2
    assert window["reference"] == "training" and window["reference_images"] == 2
    assert window["drift"] == pytest.approx(
        metric_value(second, "pixelwatch_similarity_drift", **labels)
    )
    assert window["suggested_threshold"] == metric_value(
        second, "pixelwatch_suggested_threshold", **labels
    )
    assert second.stop() == 0
