"""The models topic's layout: keys, headers, archive copies, tombstones, locations, and which
published model was live last."""

import dataclasses
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from model_records import as_records
from service.lifecycle.manager import activations
from service.lifecycle.registry import (
    ModelLocation,
    ModelRecord,
    RegistryError,
    fetch,
    from_consumer,
    parse_key,
    publications,
    republications,
    sha256_of,
    tombstone,
)
from service.scoring.model import Model, load_model


@pytest.fixture(scope="module")
def model(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


def test_keys_name_the_live_model_its_shadow_and_every_archived_version() -> None:
    assert parse_key("default") == ("default", "live")
    assert parse_key("default#shadow") == ("default", "shadow")
    assert parse_key("default@" + "ab" * 32) == ("default", "archive")


def test_a_push_writes_the_archive_copy_first_then_the_live_record(model: Model) -> None:
    data = model.path.read_bytes()
    archive, live = publications(
        "cams", data, "onnx", model=model, size=len(data), role="live", action="push"
    )
    assert archive.key == f"cams@{model.sha256}" and live.key == "cams"
    assert archive.value == live.value == data
    headers = {k: v.decode() for k, v in live.headers}
    assert headers["pixelwatch.model.version"] == model.version
    assert headers["pixelwatch.model.sha256"] == model.sha256
    assert headers["pixelwatch.model.role"] == "live"
    assert headers["pixelwatch.model.payload"] == "onnx"
    assert headers["pixelwatch.model.size"] == str(len(data))
    assert headers["pixelwatch.model.activated_at"].endswith("+00:00")
    metadata = orjson.loads(headers["pixelwatch.model.metadata"])
    assert metadata["width"] == 8 and metadata["threshold"] == model.metadata.threshold
    assert metadata["golden_images"] == 4 and metadata["reference"] == "training"
    assert "golden" not in metadata and "counts" not in str(metadata), "bulky data stays out"
    assert dict(archive.headers)["pixelwatch.model.role"] == b"archive"


def test_a_shadow_push_is_no_activation(model: Model) -> None:
    archive, shadow = publications(
        "cams", b"x", "onnx", model=model, size=1, role="shadow", action="push"
    )
    assert shadow.key == "cams#shadow"
    assert "pixelwatch.model.activated_at" not in dict(shadow.headers)
    assert "pixelwatch.model.activated_at" not in dict(archive.headers)


def test_a_rollback_republishes_an_archived_record_as_live(model: Model) -> None:
    pushed = as_records(
        publications("cams", b"graph", "onnx", model=model, size=5, role="shadow", action="push")
    )
    archive, live = republications("cams", pushed[0], role="live", action="rollback")
    assert live.key == "cams" and live.value == b"graph"
    headers = {k: v.decode() for k, v in live.headers}
    assert headers["pixelwatch.model.action"] == "rollback"
    assert headers["pixelwatch.model.role"] == "live"
    assert headers["pixelwatch.model.sha256"] == model.sha256
    assert "pixelwatch.model.activated_at" in dict(archive.headers)


def test_a_tombstone_removes_the_shadow() -> None:
    record = tombstone("cams")
    assert (record.key, record.value) == ("cams#shadow", None)


def test_a_consumed_record_keeps_its_headers_and_coordinates() -> None:
    raw = ConsumerRecord(
        topic="models", partition=0, offset=41, timestamp=1234, timestamp_type=0,
        key=b"cams#shadow", value=None, checksum=None, serialized_key_size=11,
        serialized_value_size=-1,
        headers=(("pixelwatch.model.version", b"v9"), ("junk", b"\xff\xfe")),
    )  # fmt: skip
    record = from_consumer(raw)
    assert record is not None
    assert (record.name, record.role, record.tombstone, record.offset) == (
        "cams",
        "shadow",
        True,
        41,
    )
    assert record.version == "v9" and record.headers["junk"] == "\ufffd\ufffd"
    undecodable = ConsumerRecord(
        topic="models", partition=0, offset=1, timestamp=0, timestamp_type=0, key=b"\xff",
        value=b"", checksum=None, serialized_key_size=1, serialized_value_size=0, headers=(),
    )  # fmt: skip
    assert from_consumer(undecodable) is None


def with_sha(record: ModelRecord, sha: str) -> ModelRecord:
    """The same record as if it held another model."""
    key = f"{record.name}@{sha}" if record.role == "archive" else record.key
    headers = {**record.headers, "pixelwatch.model.sha256": sha}
    return dataclasses.replace(record, key=key, headers=headers)


def test_the_newest_activation_comes_first_and_shadow_pushes_do_not_count(model: Model) -> None:
    one, two, three = "1" * 64, "2" * 64, "3" * 64
    records: list[ModelRecord] = []
    roles: list[tuple[str, Literal["live", "shadow"]]] = [
        (one, "live"),
        (two, "live"),
        (three, "shadow"),
    ]
    for sha, role in roles:
        pushed = publications("cams", b"g", "onnx", model=model, size=1, role=role, action="push")
        records += [with_sha(r, sha) for r in as_records(pushed, len(records))]
    # Compaction has removed the older live record: only the archive copies tell of `one`.
    compacted = [r for r in records if r.role != "live" or r.sha256 == two]
    assert [r.sha256 for r in activations(compacted)] == [two, one]
    # A rollback to `one` makes it the newest activation again.
    again = republications("cams", records[0], role="live", action="rollback")
    rolled = [with_sha(r, one) for r in as_records(again, 10)]
    assert [r.sha256 for r in activations(compacted + rolled)] == [one, two]


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on localhost serving `tmp_path`."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()


def test_a_location_is_fetched_from_a_file_or_over_http(
    http_root: tuple[str, Path], seed_model_path: Path
) -> None:
    url, root = http_root
    data = seed_model_path.read_bytes()
    (root / "big model.onnx").write_bytes(data)
    digest = sha256_of(data)
    for uri in (f"{url}/big%20model.onnx", f"file://{root}/big%20model.onnx"):
        assert fetch(ModelLocation(uri=uri, sha256=digest, size=len(data))) == data


def test_a_location_that_is_gone_or_holds_other_bytes_is_an_error(
    http_root: tuple[str, Path],
) -> None:
    url, root = http_root
    (root / "short.onnx").write_bytes(b"12345")
    with pytest.raises(RegistryError, match=r"cannot fetch http://127.0.0.1:\d+/gone.onnx: "):
        fetch(ModelLocation(uri=f"{url}/gone.onnx", sha256="0" * 64, size=5))
    with pytest.raises(RegistryError, match="holds 5 bytes, not the 9 the record declares"):
        fetch(ModelLocation(uri=f"{url}/short.onnx", sha256="0" * 64, size=9))
    with pytest.raises(RegistryError, match="holds more than 4 bytes"):
        fetch(ModelLocation(uri=f"file://{root}/short.onnx", sha256="0" * 64, size=4))
