"""pixelwatch as a user installs it, not as the checkout runs it.

The sdist and the wheel are built (`python -m build`: the wheel from the sdist, so a file the
sdist leaves out is missing from the wheel too) and checked with `twine check`. The wheel is
installed, not editable, into a new venv with the runtime dependencies only (no `train` extra),
and every command runs from a directory outside the checkout, so nothing is found through it.
The venv's size goes to build-results/runtime-venv.json for the deployment page.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from model_fixtures import SEED_TEST
from service.kafka.broker import KAFKA_VERSION, free_port
from worker_harness import (
    REPO,
    WorkerProcess,
    WorkerTopics,
    assert_documented,
    broker_command_until_ready,
    consume_until,
    worker_env,
)

RESULTS: Final = REPO / "build-results" / "runtime-venv.json"
# What the wheel must carry besides modules: read at run time through importlib.resources.
PACKAGE_DATA: Final = (
    "service/kafka/pom.xml",
    "service/web/static/index.html",
    "service/web/static/app.js",
    "service/web/static/style.css",
    "service/samples/seed_train.txt",
    "service/samples/seed_test.txt",
    "service/py.typed",
)
# The `train` extra: none of it belongs in a runtime install.
TRAIN_ONLY: Final = ("torch", "onnxscript", "matplotlib", "sklearn", "PIL")

pytestmark = pytest.mark.slow


def run(command: list[str | Path], cwd: Path, timeout: float = 600, **env: str) -> str:
    done = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that would lead Python to the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return {**env, **extra}


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, REPO], cwd=REPO)
    return out


@pytest.fixture(scope="module")
def wheel(dists: Path) -> Path:
    [path] = dists.glob("pixelwatch-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding the wheel and its runtime dependencies, nothing else."""
    path = tmp_path_factory.mktemp("runtime") / "venv"
    run([sys.executable, "-m", "venv", path], cwd=path.parent)
    run([path / "bin" / "python", "-m", "pip", "install", "--quiet", wheel], cwd=path.parent)
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory with no checkout above it."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    assert REPO not in directory.parents
    return directory


def test_sdist_and_wheel_pass_twine_check_and_carry_the_package_data(
    dists: Path, wheel: Path
) -> None:
    [sdist] = dists.glob("pixelwatch-*.tar.gz")
    checked = run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], cwd=REPO)
    assert checked.count("PASSED") == 2, checked
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in PACKAGE_DATA if name not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE in the wheel"
    assert not any(n.startswith("tests/") for n in names)


def test_the_runtime_venv_is_not_editable_and_holds_no_training_dependency(
    venv: Path, outside: Path
) -> None:
    code = (
        "import importlib.util, json, service\n"
        f"print(json.dumps({{'service': service.__file__, 'found': "
        f"[m for m in {list(TRAIN_ONLY)!r} if importlib.util.find_spec(m)]}}))"
    )
    found = json.loads(run([venv / "bin" / "python", "-c", code], cwd=outside))
    assert Path(found["service"]).is_relative_to(venv), f"service imported from {found['service']}"
    assert found["found"] == [], f"training dependencies installed: {found['found']}"
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert not (site / "torch").exists()
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    packages = json.loads(
        run([venv / "bin" / "python", "-m", "pip", "list", "--format", "json"], cwd=outside)
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "what": "a new venv with the pixelwatch wheel and its runtime dependencies",
                "python": sys.version.split()[0],
                "size_bytes": size,
                "size_mb": round(size / 1e6),
                "packages": len(packages),
            },
            indent=2,
        )
        + "\n"
    )
    assert_documented("build-results/runtime-venv.json", [size / 1e6])


def test_help_lists_every_command_from_outside_the_checkout(venv: Path, outside: Path) -> None:
    usage = run([venv / "bin" / "pixelwatch", "--help"], cwd=outside)
    for command in ("train", "score", "worker", "produce", "broker", "demo", "model", "dlq"):
        assert command in usage, f"`{command}` missing from --help"


def test_score_flags_only_the_course_corners_image(
    venv: Path, outside: Path, seed_model_path: Path
) -> None:
    images = outside / "seed_test.txt"
    images.write_bytes(SEED_TEST.read_bytes())
    out = run(
        [venv / "bin" / "pixelwatch", "score", "--model", seed_model_path, "--json", images],
        cwd=outside,
    )
    flags = [json.loads(line)["anomaly"] for line in out.splitlines()]
    assert flags == [False, False, True, False]


@pytest.mark.kafka
async def test_broker_resolves_its_jars_into_an_empty_cache_and_stops_on_ctrl_c(
    venv: Path, outside: Path
) -> None:
    cache, port = outside / "cache", free_port()
    code, stderr = await broker_command_until_ready(
        [str(venv / "bin" / "pixelwatch"), "broker", "--port", str(port)],
        port,
        cwd=outside,
        env=clean_env(PIXELWATCH_CACHE_DIR=str(cache)),
    )
    assert code == 0, stderr.decode()
    assert b"resolving Kafka" in stderr, "the jars were not resolved: the cache was not empty"
    libs = cache / f"kafka-{KAFKA_VERSION}" / "libs"
    assert (libs / ".complete").is_file()
    assert list(libs.glob("kafka_2.13-*.jar"))
    assert (outside / ".kafka" / "data").is_dir(), "the data dir is relative to the cwd"


def get(worker: WorkerProcess, path: str) -> tuple[int, str, bytes]:
    url = f"http://127.0.0.1:{worker.env['PIXELWATCH_METRICS_PORT']}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


@pytest.fixture
def installed_worker(
    venv: Path, outside: Path, kafka_bootstrap: str, seed_model_path: Path
) -> Iterator[tuple[WorkerProcess, WorkerTopics, str]]:
    topics = WorkerTopics()
    env = worker_env(kafka_bootstrap, topics, seed_model_path, outside / "state")
    worker = WorkerProcess(
        env,
        outside / "worker.log",
        command=[str(venv / "bin" / "pixelwatch")],
        cwd=outside,
        base_env=clean_env(),
    )
    try:
        yield worker, topics, kafka_bootstrap
    finally:
        if worker.alive():
            worker.process.kill()
            worker.process.wait()


@pytest.mark.kafka
async def test_installed_worker_is_ready_serves_its_page_and_scores_a_message(
    venv: Path, outside: Path, installed_worker: tuple[WorkerProcess, WorkerTopics, str]
) -> None:
    worker, topics, bootstrap = installed_worker
    await asyncio.to_thread(worker.wait_serving, 180, "/ready")
    status, kind, page = get(worker, "/")
    assert status == 200 and kind.startswith("text/html") and b"<html" in page.lower()
    for static in ("/static/app.js", "/static/style.css"):
        status, _, body = get(worker, static)
        assert status == 200 and body, static
    images = outside / "seed_test.txt"
    images.write_bytes(SEED_TEST.read_bytes())
    run(
        [
            venv / "bin" / "pixelwatch",
            "produce",
            images,
            "--bootstrap",
            bootstrap,
            "--topic",
            topics.images,
            "--id-prefix",
            "installed",
        ],
        cwd=outside,
    )
    records = await consume_until(
        bootstrap,
        [topics.scores, topics.anomalies],
        lambda r: len(r[topics.scores]) >= 4 and len(r[topics.anomalies]) >= 1,
        timeout=120,
        alive=worker.alive,
    )
    [anomaly] = [json.loads(r.value) for r in records[topics.anomalies]]
    assert anomaly["id"] == "installed-2", anomaly  # the corners image, the third of four
    assert await asyncio.to_thread(worker.stop, signal.SIGTERM, 90) == 0, worker.output()
