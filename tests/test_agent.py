"""The faust agent in faust's test context: batching and where each outcome is sent."""

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.config import Settings
from service.controlplane.app import create_app
from service.dataplane.pipeline import BatchResult, BatchScorer
from service.dataplane.status import DataPathStatus
from service.samples import SEED_TEST
from service.scoring.images import read_images
from service.scoring.model import load_model


class Recorder:
    """Stands in for the Kafka producer: records what the agent sends, per topic."""

    def __init__(self) -> None:
        self.sent: dict[str, list[dict[str, Any]]] = {}

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        record = {"key": key, "value": value, "headers": headers}
        self.sent.setdefault(topic, []).append(record)


async def wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_agent_scores_in_batches_and_routes_outputs(
    seed_model_path: Path, tmp_path: Path
) -> None:
    settings = Settings(batch_size=4, batch_window=0.05, data_dir=tmp_path, metrics_port=0)
    batches: list[BatchResult] = []
    scorer = BatchScorer(load_model(seed_model_path))
    app, publisher = create_app(settings, scorer, observers=[lambda r, _: batches.append(r)])
    recorder = Recorder()
    publisher.send = recorder
    scores = recorder.sent.setdefault(settings.scores_topic, [])
    anomalies = recorder.sent.setdefault(settings.anomalies_topic, [])
    dlq = recorder.sent.setdefault(settings.dlq_topic, [])

    test_images = read_images(SEED_TEST).pixels  # only the corners image is anomalous
    agent = app.agents["score"]
    async with agent.test_context() as tester:
        for i, pixels in enumerate(test_images):
            body = {"id": f"t{i}", "pixels": pixels}
            value = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
            await tester.put(value=value, key=f"t{i}".encode())
        await tester.put(value=b"not json", key=b"bad")
        await tester.put(value=orjson.dumps({"id": "z", "pixels": np.zeros(64).tolist()}))
        await wait_for(lambda: len(scores) + len(dlq) == 6)

    assert [len(b.outputs) + len(b.dead) for b in batches] == [4, 2]  # batch_size, then window
    assert [s["key"] for s in scores] == [b"t0", b"t1", b"t2", b"t3", b"z"]
    expected = scorer.model.score(test_images).anomaly
    flagged = [a["key"] for a in anomalies]
    assert flagged == [f"t{i}".encode() for i in np.flatnonzero(expected)]
    [dead] = dlq
    assert dead["value"] == b"not json" and dead["key"] == b"bad"
    assert dict(dead["headers"])["pixelwatch.error.reason"] == b"invalid_json"


async def test_an_exception_that_ends_the_agent_is_reported_as_a_data_path_crash(
    seed_model_path: Path, tmp_path: Path
) -> None:
    settings = Settings(batch_size=4, batch_window=0.05, data_dir=tmp_path, metrics_port=0)
    scorer = BatchScorer(load_model(seed_model_path))
    status = DataPathStatus()

    def fails(_result: BatchResult, _seconds: float) -> None:
        raise OverflowError("cannot encode ts")

    app, publisher = create_app(settings, scorer, observers=[fails], on_crash=status.crashed)
    publisher.send = Recorder()
    crashes: list[BaseException] = []

    async def on_error(_agent: object, exc: BaseException) -> None:
        crashes.append(exc)

    async with app.agents["score"].test_context(on_error=on_error) as tester:
        assert status.liveness().ok
        await tester.put(value=orjson.dumps({"id": "a", "pixels": np.zeros(64).tolist()}))
        await wait_for(lambda: bool(crashes))
    verdict = status.liveness()
    assert not verdict.ok
    assert verdict.reason == "data path crashed: OverflowError('cannot encode ts')"
