"""The faust agent in faust's test context: batching and where each outcome is sent."""

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from service.app import create_app
from service.config import Settings
from service.images import read_images
from service.model import load_model
from service.pipeline import BatchResult, BatchScorer
from service.samples import SEED_TEST


class Recorder:
    """Stands in for one outbound topic: records what the agent sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_soon(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_agent_scores_in_batches_and_routes_outputs(
    seed_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(batch_size=4, batch_window=0.05, data_dir=tmp_path, metrics_port=0)
    batches: list[BatchResult] = []
    scorer = BatchScorer(load_model(seed_model_path))
    app, topics = create_app(settings, scorer, observers=[lambda r, _: batches.append(r)])
    scores, anomalies, dlq = Recorder(), Recorder(), Recorder()
    monkeypatch.setattr(topics, "scores", scores)
    monkeypatch.setattr(topics, "anomalies", anomalies)
    monkeypatch.setattr(topics, "dlq", dlq)

    test_images = read_images(SEED_TEST).pixels  # only the corners image is anomalous
    agent = app.agents["score"]
    async with agent.test_context() as tester:
        for i, pixels in enumerate(test_images):
            value = orjson.dumps({"id": f"t{i}", "pixels": pixels}, option=orjson.OPT_SERIALIZE_NUMPY)
            await tester.put(value=value, key=f"t{i}".encode())
        await tester.put(value=b"not json", key=b"bad")
        await tester.put(value=orjson.dumps({"id": "z", "pixels": np.zeros(64).tolist()}))
        await wait_for(lambda: len(scores.sent) + len(dlq.sent) == 6)

    assert [len(b.outputs) + len(b.dead) for b in batches] == [4, 2]  # batch_size, then window
    assert [s["key"] for s in scores.sent] == [b"t0", b"t1", b"t2", b"t3", b"z"]
    expected = scorer.model.score(test_images).anomaly
    flagged = [a["key"] for a in anomalies.sent]
    assert flagged == [f"t{i}".encode() for i in np.flatnonzero(expected)]
    [dead] = dlq.sent
    assert dead["value"] == b"not json" and dead["key"] == b"bad"
    assert dict(dead["headers"])["pixelwatch.error.reason"] == b"invalid_json"
