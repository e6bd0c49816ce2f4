"""`pixelwatch model` on the real broker: push, list, shadow, promote, rollback, discard, and
one-line errors for what would be refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.scoring.model import METADATA_PREFIX, Model, load_model
from test_model_reference import rewrite_props
from worker_harness import WorkerTopics

pytestmark = pytest.mark.kafka


class Cli:
    """Runs `pixelwatch model ...` against the test broker and a fresh models topic."""

    def __init__(self, bootstrap: str, topics: WorkerTopics) -> None:
        self.env = {
            **os.environ,
            "PIXELWATCH_BOOTSTRAP": bootstrap,
            **topics.env(),
            "PIXELWATCH_MODEL_NAME": "cams",
        }

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", "model", *args],
            capture_output=True, text=True, timeout=120, check=False, env=self.env,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def rows(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = json.loads(self.ok("list", "--json"))
        return rows


@pytest.fixture
def cli(kafka_bootstrap: str, topics: WorkerTopics) -> Cli:
    return Cli(kafka_bootstrap, topics)


@pytest.fixture(scope="module")
def v1(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


@pytest.fixture(scope="module")
def v2(candidate_model_path: Path) -> Model:
    return load_model(candidate_model_path)


def roles(cli: Cli) -> dict[str, object]:
    return {str(row["version"]): row["role"] for row in cli.rows()}


def test_push_shadow_promote_rollback_and_discard_as_list_and_status_show_them(
    cli: Cli, v1: Model, v2: Model
) -> None:
    assert cli.ok("list") == f"{cli.env['PIXELWATCH_MODELS_TOPIC']}: no model published yet\n"
    out = cli.ok("push", str(v1.path))
    assert out.startswith(f"published {v1.version} ({v1.sha256[:12]}) as live on ")
    assert cli.ok("push", str(v1.path)).endswith("is already live on " + _where(cli) + "\n")
    cli.ok("push", str(v2.path), "--shadow")
    assert roles(cli) == {v1.version: "live", v2.version: "shadow"}
    status = json.loads(cli.ok("status", "--json"))
    assert status["live"]["sha256"] == v1.sha256 and status["shadow"]["sha256"] == v2.sha256
    assert status["window"] is None  # no worker has scored anything

    assert "promoted" in cli.ok("promote")
    assert roles(cli) == {v1.version: "", v2.version: "live"}
    assert json.loads(cli.ok("status", "--json"))["shadow"] is None

    assert "rolled" in cli.ok("rollback", v1.version)
    assert roles(cli) == {v1.version: "live", v2.version: ""}
    assert "already live" in cli.ok("rollback", v1.sha256[:8])
    [row] = [r for r in cli.rows() if r["version"] == v1.version]
    assert row["published_by"] and row["activated_at"] and row["image"] == "8x8 binary"

    cli.ok("push", str(v2.path), "--shadow")
    assert "discarded" in cli.ok("discard")
    assert roles(cli) == {v1.version: "live", v2.version: ""}
    text = cli.ok("list")
    assert text.splitlines()[0].split() == [
        "NAME", "VERSION", "SHA256", "ROLE", "SIZE", "IMAGE", "THRESHOLD", "PUBLISHED",
    ]  # fmt: skip
    assert f"cams  {v1.version}  {v1.sha256[:12]}  live" in text


def _where(cli: Cli) -> str:
    return f"{cli.env['PIXELWATCH_MODELS_TOPIC']}: model cams"


def test_mistakes_end_with_one_line_and_publish_nothing(
    cli: Cli, v1: Model, tmp_path: Path
) -> None:
    cases: list[tuple[list[str], str]] = [
        (["promote"], f"error: {_where(cli)} has no shadow model to promote"),
        (["discard"], f"error: {_where(cli)} has no shadow model to discard"),
        (
            ["rollback", "20000101T000000Z"],
            f"error: {_where(cli)} has no version 20000101T000000Z (see `pixelwatch model list`)",
        ),
        (
            ["push", str(tmp_path / "none.onnx")],
            f"error: {tmp_path / 'none.onnx'}: model file not found",
        ),
    ]
    props = v1.metadata.to_props()
    golden = json.loads(props[METADATA_PREFIX + "golden"])
    golden["scores"]["hamming"][0] = 0.5
    tampered = rewrite_props(v1.path, tmp_path / "tampered.onnx", {"golden": json.dumps(golden)})
    cases.append(
        (
            ["push", str(tampered)],
            f"error: {tampered}: refused (self_test): hamming of golden image 0",
        )
    )
    cases.append(
        (
            ["push", str(v1.path), "--max-inline-bytes", "1000"],
            f"error: {v1.path}: {v1.path.stat().st_size} bytes, over --max-inline-bytes 1000: "
            "put it where the workers can read it and give --uri",
        )
    )
    for args, expected in cases:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(expected), line
        assert "Traceback" not in result.stderr
    assert cli.rows() == []


def test_a_large_model_is_published_as_a_location_the_workers_fetch(
    cli: Cli, v1: Model, v2: Model, tmp_path: Path
) -> None:
    shared = tmp_path / "shared" / "v1.onnx"
    shared.parent.mkdir()
    shared.write_bytes(v1.path.read_bytes())
    out = cli.ok("push", str(v1.path), "--max-inline-bytes", "1000", "--uri", shared.as_uri())
    assert "as live" in out
    [row] = cli.rows()
    assert row["payload"] == "uri" and row["sha256"] == v1.sha256
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the same bytes")
    result = cli("push", str(v2.path), "--shadow", "--uri", other.as_uri())
    assert result.returncode == 2
    assert "holds 18 bytes, not the" in result.stderr
