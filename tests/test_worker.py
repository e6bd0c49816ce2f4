"""The real worker command on the real broker: verdicts, dead letters, partitions, restarts."""

import hashlib
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka.admin import AdminClient

from conftest import StartWorker
from service.samples import SEED_TEST, SEED_TRAIN
from service.schemas import (
    HEADER_FORMAT,
    HEADER_ID,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
    MessageScores,
    ScoreMessage,
)
from service.scoring.images import read_images
from service.scoring.model import load_model
from worker_harness import (
    WorkerTopics,
    consume_until,
    produce,
    wait_for_topic,
)

pytestmark = pytest.mark.kafka


def image(ident: str, pixels: np.ndarray) -> tuple[bytes, bytes]:
    value = orjson.dumps({"id": ident, "pixels": pixels}, option=orjson.OPT_SERIALIZE_NUMPY)
    return ident.encode(), value


async def test_normal_and_anomalous_images_get_the_models_verdicts(
    kafka_bootstrap: str, seed_model_path: Path, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    worker = start_worker(PIXELWATCH_PARTITIONS="4")
    rng = np.random.default_rng(1)
    images = np.concatenate(
        [
            read_images(SEED_TEST).pixels,
            read_images(SEED_TRAIN).pixels,
            (rng.random((10, 64)) < 0.5).astype(np.float32),
        ]
    )
    ids = [f"img-{i}" for i in range(len(images))]
    expected = load_model(seed_model_path).score(images).anomaly
    assert 0 < expected.sum() < len(images)  # both verdicts are exercised

    # Wait until the worker created the 4-partition topic, then produce through it.
    assert await wait_for_topic(kafka_bootstrap, topics.images, worker.alive) == 4
    await produce(
        kafka_bootstrap, topics.images, [image(i, p) for i, p in zip(ids, images, strict=True)]
    )
    records = await consume_until(
        kafka_bootstrap,
        [topics.scores, topics.anomalies],
        lambda r: len(r[topics.scores]) >= len(ids) and len(r[topics.anomalies]) >= expected.sum(),
        alive=worker.alive,
    )
    scored = {
        r.key.decode(): ScoreMessage.model_validate_json(r.value) for r in records[topics.scores]
    }
    assert sorted(scored) == sorted(ids)
    assert {i: scored[i].anomaly for i in ids} == dict(zip(ids, expected.tolist(), strict=True))
    flagged = sorted(r.key.decode() for r in records[topics.anomalies])
    assert flagged == sorted(i for i, a in zip(ids, expected, strict=True) if a)
    assert {m.source.partition for m in scored.values()} == {0, 1, 2, 3}  # several partitions
    assert worker.stop() == 0


async def test_grouped_scores_answer_a_message_of_50_images_with_one_record(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    worker = start_worker(PIXELWATCH_PARTITIONS="1", PIXELWATCH_SCORES_GROUPING="message")
    worker.wait_serving()
    pixels = read_images(SEED_TEST).pixels
    fifty = np.resize(pixels, (50, pixels.shape[1]))  # the four test images, cycled
    value = np.packbits(fifty.astype(np.uint8), axis=1).tobytes()
    headers = [(HEADER_FORMAT, b"bits"), (HEADER_ID, b"tray-7")]
    await produce(kafka_bootstrap, topics.images, [(b"tray-7", value, headers)])
    records = await consume_until(
        kafka_bootstrap,
        [topics.scores, topics.anomalies],
        lambda r: len(r[topics.scores]) >= 1 and len(r[topics.anomalies]) >= 12,
        timeout=60,
        alive=worker.alive,
    )
    [record] = [MessageScores.model_validate_json(r.value) for r in records[topics.scores]]
    assert records[topics.scores][0].key == b"tray-7"
    assert [v.id for v in record.images] == [f"tray-7:{k}" for k in range(50)]
    flagged = [v.index for v in record.images if v.anomaly]
    assert flagged == list(range(2, 50, 4))  # the corners image, every fourth
    # The anomalies topic keeps one full record per flagged image.
    assert sorted(r.key for r in records[topics.anomalies]) == sorted(
        f"tray-7:{k}".encode() for k in flagged
    )


async def test_each_bad_input_lands_in_the_dead_letter_topic_with_its_reason(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    worker = start_worker(PIXELWATCH_PARTITIONS="1", PIXELWATCH_MAX_MESSAGE_BYTES="4096")
    bad = {
        b"oversized": (b'{"pixels": "' + b"." * 5000 + b'"}', "oversized"),
        b"json": (b"{not json", "invalid_json"),
        b"types": (b'{"pixels": {"a": 1}}', "schema"),
        b"count": (b'{"pixels": [0, 1, 0]}', "pixel_count"),
        b"range": (b'{"pixels": [' + b"0, " * 63 + b"7]}", "pixel_value"),
        b"nan": (b'{"pixels": [' + b"0, " * 63 + b"NaN]}", "pixel_value"),
    }
    good = image("good", np.zeros(64, dtype=np.float32))
    await produce(kafka_bootstrap, topics.images, [(k, v) for k, (v, _) in bad.items()] + [good])
    records = await consume_until(
        kafka_bootstrap,
        [topics.dlq, topics.scores],
        lambda r: len(r[topics.dlq]) >= len(bad) and len(r[topics.scores]) >= 1,
        alive=worker.alive,
    )
    dead = {r.key: r for r in records[topics.dlq]}
    assert sorted(dead) == sorted(bad)
    for key, (value, reason) in bad.items():
        headers = {k: v.decode() for k, v in dead[key].headers}
        assert dead[key].value == value, "the original bytes are kept"
        assert headers[HEADER_REASON] == reason, key
        assert headers[HEADER_TOPIC] == topics.images and headers[HEADER_PARTITION] == "0"
    assert [r.key for r in records[topics.scores]] == [b"good"]
    assert worker.stop() == 0
    assert "-> DLQ (pixel_count)" in worker.output()


async def test_a_worker_restarted_mid_stream_loses_no_message(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    total = 4000
    rng = np.random.default_rng(2)
    pixels = (rng.random((total, 64)) < 0.3).astype(np.float32)
    messages = [image(f"m{i}", pixels[i]) for i in range(total)]
    messages[::97] = [(f"m{i}".encode(), b"broken") for i in range(0, total, 97)]
    expected = {f"m{i}" for i in range(total)}

    first = start_worker(PIXELWATCH_BATCH_SIZE="50")
    await produce(kafka_bootstrap, topics.images, messages)

    def ids(records: dict[str, list]) -> set[str]:  # type: ignore[type-arg]
        return {r.key.decode() for t in (topics.scores, topics.dlq) for r in records[t]}

    await consume_until(
        kafka_bootstrap, [topics.scores, topics.dlq], lambda r: len(ids(r)) > total // 10,
        alive=first.alive,
    )  # fmt: skip
    assert first.stop(signal.SIGTERM) == 0, first.output()[-2000:]

    second = start_worker(PIXELWATCH_BATCH_SIZE="50")
    records = await consume_until(
        kafka_bootstrap, [topics.scores, topics.dlq], lambda r: ids(r) >= expected,
        timeout=120, alive=second.alive,
    )  # fmt: skip
    assert ids(records) == expected
    dead = {r.key.decode() for r in records[topics.dlq]}
    assert dead == {f"m{i}" for i in range(0, total, 97)}
    second.wait_serving()  # the first may have answered everything before it stopped
    assert second.stop() == 0


async def test_log_level_error_keeps_info_and_warning_lines_of_every_library_out(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    worker = start_worker(PIXELWATCH_LOG_LEVEL="ERROR")
    # A dead letter is logged at WARNING; start-up, joins and commits at INFO.
    await produce(
        kafka_bootstrap, topics.images, [(b"bad", b"{not json"), image("ok", np.zeros(64))]
    )
    await consume_until(
        kafka_bootstrap, [topics.scores, topics.dlq],
        lambda r: len(r[topics.scores]) >= 1 and len(r[topics.dlq]) >= 1, alive=worker.alive,
    )  # fmt: skip
    assert worker.stop() == 0
    lines = [line for line in worker.output().splitlines() if line.strip()]
    loud = [line for line in lines if re.search(r"\bINFO\b|\bWARNING\b|\bWARN\b", line)]
    assert loud == [], loud[:5]


async def test_an_instance_id_makes_the_worker_a_static_member_of_its_group(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    worker = start_worker(PIXELWATCH_GROUP_INSTANCE_ID="@hostname")
    await produce(kafka_bootstrap, topics.images, [image("one", np.zeros(64))])
    await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(r[topics.scores]) >= 1, alive=worker.alive
    )
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    groups = admin.describe_consumer_groups([topics.group])
    [description] = [f.result(timeout=30) for f in groups.values()]
    assert [m.group_instance_id for m in description.members] == [socket.gethostname()]
    assert worker.stop() == 0


def test_an_instance_id_kafka_would_refuse_is_refused_at_start_up() -> None:
    result = worker_cli(env={"PIXELWATCH_GROUP_INSTANCE_ID": "pod 1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid setting PIXELWATCH_GROUP_INSTANCE_ID='pod 1'")


def worker_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`pixelwatch worker` run to its end: for start-up failures, which must exit on their own."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "worker", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def test_worker_refuses_a_missing_model_with_one_line(tmp_path: Path) -> None:
    result = worker_cli("--model", str(tmp_path / "none.onnx"))
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"error: {tmp_path / 'none.onnx'}: model file not found "
        "(train one with `pixelwatch train`)"
    )


def test_a_pinned_model_digest_refuses_any_other_model_file_in_one_line(
    seed_model_path: Path, tmp_path: Path
) -> None:
    digest = hashlib.sha256(seed_model_path.read_bytes()).hexdigest()
    assert load_model(seed_model_path, sha256=digest.upper()).sha256 == digest
    other = "0" * 64
    result = worker_cli(
        "--model", str(seed_model_path),
        env={"PIXELWATCH_MODEL_SHA256": other, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {seed_model_path}: sha256 {digest} is not the pinned {other} "
        "(PIXELWATCH_MODEL_SHA256); refusing to score with it"
    )


def test_worker_retries_an_unreachable_broker_visibly_then_gives_up(
    seed_model_path: Path, tmp_path: Path
) -> None:
    from service.kafka.broker import free_port

    port = free_port()  # nothing listens here
    result = worker_cli(
        "--model", str(seed_model_path), "--bootstrap", f"127.0.0.1:{port}",
        env={"PIXELWATCH_CONNECT_TIMEOUT": "3", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2
    assert f"Kafka at 127.0.0.1:{port} not reachable (attempt 1), retrying" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Kafka at 127.0.0.1:{port} not reachable after 3s")
    assert "Traceback" not in result.stderr


def test_worker_refuses_a_metrics_port_in_use_with_one_line(
    seed_model_path: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = worker_cli(
            "--model", str(seed_model_path), "--metrics-port", str(port),
            "--data-dir", str(tmp_path / "state"),
            env={"PIXELWATCH_METRICS_HOST": "127.0.0.1", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: metrics port 127.0.0.1:{port} is not free")
    assert "Traceback" not in result.stderr


def test_worker_refuses_a_data_dir_it_cannot_create_with_one_line(
    seed_model_path: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = worker_cli(
        "--model", str(seed_model_path), "--data-dir", str(blocker / "state"),
        "--metrics-port", "0", env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: data dir {blocker / 'state'}: cannot create it (Not a directory); "
        "set PIXELWATCH_DATA_DIR"
    )


def test_a_worker_stopped_while_it_waits_for_kafka_exits_at_once_with_code_0(
    seed_model_path: Path, tmp_path: Path
) -> None:
    from service.kafka.broker import free_port

    port = free_port()  # nothing listens here
    env = {
        "PATH": "/usr/bin:/bin",
        "PIXELWATCH_CONNECT_TIMEOUT": "300",
        "PIXELWATCH_MODEL": str(seed_model_path),
        "PIXELWATCH_BOOTSTRAP": f"127.0.0.1:{port}",
        "PIXELWATCH_METRICS_PORT": "0",
        "PIXELWATCH_DATA_DIR": str(tmp_path / "state"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:
        if "not reachable (attempt 1)" in line:
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    rest = process.stderr.read()
    assert "stopped during start-up (signal 15)" in rest and "Traceback" not in rest
