"""The worker image, built here with podman (deploy/image.sh, as `make image` does) and run.

No registry is reachable from the test machine, so the image builds on a Debian base made by
debootstrap; the Dockerfile and its stages are the ones users build on the official Python
image. The container runs on the host's network against the session's broker, with the model
mounted read-only, as compose and Kubernetes mount it.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from confluent_kafka import Consumer, TopicPartition

from model_fixtures import SEED_TEST
from service.kafka.broker import default_cache_dir, free_port
from worker_harness import REPO, WorkerTopics, assert_documented, consume_until

TAG: Final = "test"
RESULTS_DIR: Final = REPO / "build-results"
TRAIN_ONLY: Final = ("torch", "onnxscript", "matplotlib", "sklearn", "PIL")

pytestmark = pytest.mark.slow


def podman_env() -> dict[str, str]:
    # The containers.conf deploy/image.sh writes (runc, ulimits within the machine's limits).
    conf = default_cache_dir() / "podman" / "containers.conf"
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(
        ["podman", *args],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def build_image(target: str, timeout: float, **extra: str) -> str:
    """`deploy/image.sh TARGET`, as `make image` runs it; returns the image's name."""
    # The debootstrap base, whatever the caller's PYTHON_IMAGE: the build the docs report.
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_IMAGE"}
    env |= {"IMAGE_TAG": TAG, "RESULTS_DIR": str(RESULTS_DIR), **extra}
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "image.sh"), target],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return f"localhost/pixelwatch-{target}:{TAG}"


@pytest.fixture(scope="module")
def worker_image() -> str:
    return build_image("worker", timeout=1200)


@pytest.fixture
def model_dir(tmp_path: Path, seed_model_path: Path) -> Path:
    """The session's model, readable by the image's user 10001 (the test runs as another)."""
    directory = tmp_path / "models"
    directory.mkdir()
    shutil.copy(seed_model_path, directory / "model.onnx")
    (directory / "model.onnx").chmod(0o644)
    directory.chmod(0o755)
    return directory


class Container:
    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.strip() == "true"

    def logs(self) -> str:
        done = subprocess.run(
            ["podman", "logs", self.name],
            env=podman_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return (done.stdout + done.stderr)[-3000:]

    def status(self, path: str) -> int:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)


@pytest.fixture
def container(
    worker_image: str, model_dir: Path, kafka_bootstrap: str
) -> Iterator[tuple[Container, WorkerTopics]]:
    topics, port = WorkerTopics(), free_port()
    env = {
        "PIXELWATCH_BOOTSTRAP": kafka_bootstrap,
        "PIXELWATCH_METRICS_PORT": str(port),
        "PIXELWATCH_BATCH_WINDOW": "0.02",
        "PIXELWATCH_PARTITIONS": "2",
        **topics.env(),
    }
    name = f"pixelwatch-test-{topics.run}"
    flags = [f"--env={k}={v}" for k, v in env.items()]
    podman(
        "run", "--detach", "--name", name, "--network", "host", "--no-healthcheck",
        "--volume", f"{model_dir}:/models:ro", *flags, worker_image,
    )  # fmt: skip
    try:
        yield Container(name, port), topics
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def wait_ready(container: Container, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert container.running(), f"the container exited:\n{container.logs()}"
        try:
            if container.status("/ready") == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"never ready:\n{container.logs()}"
        time.sleep(0.5)


def committed_and_end(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[int, int]:
    """Offsets the group committed on `topic`, and the topic's end offsets, summed."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = sum(max(tp.offset, 0) for tp in reader.committed(tps, timeout=10))
        end = sum(reader.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return committed, end
    finally:
        reader.close()


@pytest.mark.kafka
async def test_the_image_flags_the_corners_is_ready_and_stops_on_sigterm_with_offsets_committed(
    container: tuple[Container, WorkerTopics], kafka_bootstrap: str, tmp_path: Path
) -> None:
    worker, topics = container
    await asyncio.to_thread(wait_ready, worker)
    produce = [sys.executable, "-m", "service.cli", "produce", str(SEED_TEST)]
    produce += ["--bootstrap", kafka_bootstrap, "--topic", topics.images, "--id-prefix", "image"]
    await asyncio.to_thread(subprocess.run, produce, check=True, capture_output=True, timeout=120)
    records = await consume_until(
        kafka_bootstrap,
        [topics.scores, topics.anomalies],
        lambda r: len(r[topics.scores]) >= 4 and len(r[topics.anomalies]) >= 1,
        timeout=120,
        alive=worker.running,
    )
    assert [json.loads(r.value)["id"] for r in records[topics.anomalies]] == ["image-2"]
    assert sorted(json.loads(r.value)["id"] for r in records[topics.scores]) == [
        f"image-{i}" for i in range(4)
    ]

    await asyncio.to_thread(podman, "kill", "--signal", "TERM", worker.name)
    code = (await asyncio.to_thread(podman, "wait", worker.name, timeout=120)).strip()
    assert code == "0", f"exit code {code}:\n{worker.logs()}"
    committed, end = committed_and_end(kafka_bootstrap, topics.group, topics.images, 2)
    assert (committed, end) == (4, 4)


def test_the_image_runs_as_user_10001_without_any_training_dependency(worker_image: str) -> None:
    assert podman("image", "inspect", "--format", "{{.Config.User}}", worker_image).strip() == (
        "10001:10001"
    )
    code = (
        "import importlib.util, json, os; "
        f"print(json.dumps([os.getuid(), [m for m in {list(TRAIN_ONLY)!r} "
        "if importlib.util.find_spec(m)]]))"
    )
    out = podman("run", "--rm", "--network", "none", "--entrypoint", "python", worker_image,
                 "-c", code)  # fmt: skip
    assert json.loads(out) == [10001, []]
    # The size deploy/image.sh measured, for the deployment page.
    result = json.loads((RESULTS_DIR / "image-worker.json").read_text())
    assert result["image"] == f"pixelwatch-worker:{TAG}" and result["size_bytes"] > 0
    assert result["base"] == "localhost/pixelwatch-base:bookworm"  # the deployment page's build
    sizes = [result["size_bytes"] / 1e6, result["base_size_bytes"] / 1e6]
    assert_documented("build-results/image-worker.json", sizes)


@pytest.fixture(scope="module")
def model_image() -> str:
    """The model target, which builds the trainer stage and trains the seed model inside it.
    PyTorch's CPU-only index (the Dockerfile's default) is not reachable from the test
    machines, so the trainer stage takes PyPI's torch (the CUDA build, run on the CPU)."""
    return build_image("model", timeout=1800, TORCH_INDEX_URL="https://pypi.org/simple")


def test_the_model_image_holds_a_model_trained_in_its_build_that_flags_the_corners(
    model_image: str, tmp_path: Path
) -> None:
    listing = podman("run", "--rm", "--network", "none", model_image)
    [line] = [entry for entry in listing.splitlines() if entry.endswith("model.onnx")]
    mode, _, owner, group, *_ = line.split()
    assert (mode[:4], owner, group) == ("-rw-", "pixelwatch", "pixelwatch"), line
    name = f"pixelwatch-model-{os.getpid()}"
    podman("create", "--name", name, model_image)
    try:
        podman("cp", f"{name}:/models/model.onnx", str(tmp_path / "model.onnx"))
    finally:
        podman("rm", "--force", name, check=False)
    score = [sys.executable, "-m", "service.cli", "score", "--json", str(SEED_TEST)]
    done = subprocess.run(
        [*score, "--model", str(tmp_path / "model.onnx")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert [json.loads(line)["anomaly"] for line in done.stdout.splitlines()] == [
        False, False, True, False,
    ]  # fmt: skip
    result = json.loads((RESULTS_DIR / "image-model.json").read_text())
    assert_documented("build-results/image-model.json", [result["size_bytes"] / 1e6])
