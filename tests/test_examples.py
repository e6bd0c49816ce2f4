"""The producer examples under docs/examples/, each built and run against the real broker:
the worker scores the two images it sends and finds the corners on the anomalies topic."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np
import pytest

from conftest import StartWorker
from service.samples import SEED_TEST, SEED_TRAIN
from service.scoring.images import read_images
from service.scoring.model import load_model
from worker_harness import WorkerTopics, consume_until, wait_for_topic

EXAMPLES: Final = Path(__file__).resolve().parents[1] / "docs" / "examples"
MAX_LINES: Final = 30
# What each example sends: the course's training square and its anomalous corners.
EXPECTED: Final = {"example/square": False, "example/corners": True}


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: run `make examples` (deploy/examples-setup.sh)"
    return path


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> None:
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"


def _copy(name: str, tmp_path: Path) -> Path:
    """The example's directory copied out of the checkout, so its build writes nothing there."""
    return Path(shutil.copytree(EXAMPLES / name, tmp_path / name))


def python_json(tmp_path: Path) -> list[str]:
    return [sys.executable, str(EXAMPLES / "python" / "produce_json.py")]


def python_bits(tmp_path: Path) -> list[str]:
    return [sys.executable, str(EXAMPLES / "python" / "produce_bits.py")]


def java(tmp_path: Path) -> list[str]:
    project = _copy("java", tmp_path)
    _tool("javac")
    _run([_tool("mvn"), "-q", "-B", "compile", "dependency:copy-dependencies"], project)
    classpath = f"{project / 'target' / 'classes'}:{project / 'target' / 'dependency' / '*'}"
    return [_tool("java"), "-cp", classpath, "Produce"]


def go(tmp_path: Path) -> list[str]:
    module = _copy("go", tmp_path)
    binary = tmp_path / "produce"
    # -mod=readonly: go.mod and go.sum as committed must be complete, nothing is rewritten.
    _run([_tool("go"), "build", "-mod=readonly", "-o", str(binary), "."], module)
    return [str(binary)]


def kcat(tmp_path: Path) -> list[str]:
    _tool("kcat")
    return ["bash", str(EXAMPLES / "kcat" / "produce.sh")]


BUILDS: Final[dict[str, Callable[[Path], list[str]]]] = {
    "python-json": python_json,
    "python-bits": python_bits,
    "java": java,
    "go": go,
    "kcat": kcat,
}
SOURCES: Final = {
    "python-json": "python/produce_json.py",
    "python-bits": "python/produce_bits.py",
    "java": "java/src/main/java/Produce.java",
    "go": "go/main.go",
    "kcat": "kcat/produce.sh",
}


@pytest.mark.parametrize("source", SOURCES.values())
def test_each_example_is_at_most_thirty_lines(source: str) -> None:
    lines = (EXAMPLES / source).read_text().splitlines()
    assert 0 < len(lines) <= MAX_LINES, f"{source}: {len(lines)} lines"


def test_the_seed_model_flags_the_corners_and_passes_the_square(seed_model_path: Path) -> None:
    """The premise of every example: the images it sends get these verdicts."""
    corners = read_images(SEED_TEST).pixels[2]
    square = read_images(SEED_TRAIN).pixels[0]
    verdicts = load_model(seed_model_path).score(np.stack([square, corners])).anomaly
    assert verdicts.tolist() == list(EXPECTED.values())


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("example", BUILDS)
async def test_the_example_sends_both_images_and_the_worker_flags_the_corners(
    example: str,
    kafka_bootstrap: str,
    topics: WorkerTopics,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    argv = BUILDS[example](tmp_path)
    worker = start_worker()
    await wait_for_topic(kafka_bootstrap, topics.images, worker.alive)
    env = {
        **os.environ,
        "PIXELWATCH_BOOTSTRAP": kafka_bootstrap,
        "PIXELWATCH_INPUT_TOPIC": topics.images,
    }
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, output.decode(errors="replace")

    records = await consume_until(
        kafka_bootstrap,
        [topics.scores, topics.anomalies],
        lambda r: len(r[topics.scores]) >= len(EXPECTED) and len(r[topics.anomalies]) >= 1,
        alive=worker.alive,
    )
    verdicts = {r.key.decode(): json.loads(r.value)["anomaly"] for r in records[topics.scores]}
    assert verdicts == EXPECTED
    [anomaly] = records[topics.anomalies]
    assert anomaly.key == b"example/corners"
    assert json.loads(anomaly.value)["id"] == "example/corners"
    assert worker.stop() == 0
