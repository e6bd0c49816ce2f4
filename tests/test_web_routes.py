"""The probes, the page and its live stream on a real aiohttp server, over real HTTP."""

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from service.dataplane.status import DataPathStatus
from service.web.feed import AnomalyFeed
from service.web.routes import SECURITY_HEADERS, add_page_routes, add_probe_routes, secure
from web_fixtures import MODEL, payload

STALL = 30.0
Client = TestClient[web.Request, web.Application]


def server_app(status: DataPathStatus, feed: AnomalyFeed | None) -> web.Application:
    app = web.Application()
    secure(app)
    add_probe_routes(app, status, STALL)
    if feed is not None:
        add_page_routes(app, feed)
    return app


@pytest.fixture
def status() -> DataPathStatus:
    return DataPathStatus()


@pytest.fixture
def feed() -> AnomalyFeed:
    return AnomalyFeed(10, MODEL)


@pytest.fixture
async def client(status: DataPathStatus, feed: AnomalyFeed) -> AsyncIterator[Client]:
    async with TestClient(TestServer(server_app(status, feed))) as client:
        yield client


async def read_event(response: ClientResponse) -> tuple[str, object]:
    """The next server-sent event with data, as (event name, parsed data)."""
    name, data = "message", None
    while True:
        line = (await response.content.readline()).decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if not line:
            if data is not None:
                return name, orjson.loads(data)
            continue
        field, _, value = line.partition(": ")
        if field == "event":
            name = value
        elif field == "data":
            assert data is None, "one data line per event"
            data = value


async def next_event(response: ClientResponse, wanted: str) -> object:
    while True:
        name, data = await read_event(response)
        if name == wanted:
            return data


async def test_healthz_answers_alive_until_the_data_path_crashes(
    client: Client, status: DataPathStatus
) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["alive"] is True
    status.crashed(RuntimeError("consumer thread died"))
    response = await client.get("/healthz")
    assert response.status == 503
    body = await response.json()
    assert body["alive"] is False
    assert body["reason"] == "data path crashed: RuntimeError('consumer thread died')"


async def test_ready_answers_503_with_the_reason_until_partitions_are_assigned(
    client: Client, status: DataPathStatus
) -> None:
    response = await client.get("/ready")
    assert response.status == 503
    assert await response.json() == {
        "ready": False,
        "reason": "no input partition assigned",
        "partitions": 0,
        "lag": None,
        "idle_seconds": None,
    }
    status.set_assigned(3)
    status.set_lag(0)
    response = await client.get("/ready")
    assert response.status == 200
    body = await response.json()
    assert (body["ready"], body["reason"], body["partitions"], body["lag"]) == (True, "", 3, 0)


async def test_the_page_and_its_files_are_served_with_a_strict_content_security_policy(
    client: Client,
) -> None:
    for path, kind, marker in [
        ("/", "text/html", "<title>pixelwatch"),
        ("/static/app.js", "text/javascript", "new EventSource"),
        ("/static/style.css", "text/css", ".anomaly"),
    ]:
        response = await client.get(path)
        assert response.status == 200, path
        assert response.content_type == kind
        assert marker in await response.text()
        for header, value in SECURITY_HEADERS.items():
            assert response.headers[header] == value, (path, header)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    missing = await client.get("/static/../feed.py")
    assert missing.status == 404
    assert missing.headers["Content-Security-Policy"] == csp


async def test_the_page_loads_nothing_from_elsewhere(client: Client) -> None:
    for path in ("/", "/static/app.js", "/static/style.css"):
        text = (await (await client.get(path)).text()).lower()
        for needle in ("http:", "https:", "url(", "@import", "fetch(", "innerhtml"):
            assert needle not in text, (path, needle)
    html = await (await client.get("/")).text()
    assert 'src="static/app.js"' in html and 'href="static/style.css"' in html


async def test_the_stream_sends_a_snapshot_then_each_new_anomaly_from_the_data_path_thread(
    client: Client, feed: AnomalyFeed
) -> None:
    feed.add_batch([payload("before", 1)], scored=8, dead_letters=1)
    response = await client.get("/events")
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    snapshot = await next_event(response, "snapshot")
    assert isinstance(snapshot, dict)
    assert snapshot["config"] == {
        "model": {
            "version": MODEL.version, "sha256": MODEL.sha256, "metric": "hamming",
            "mode": "binary", "width": 2, "height": 2, "threshold": 0.6,
        },
        "capacity": 10,
        "window": 60.0,
    }  # fmt: skip
    assert [a["id"] for a in snapshot["anomalies"]] == ["before"]
    assert (snapshot["stats"]["scored"], snapshot["stats"]["dead_letters"]) == (8, 1)

    batch = threading.Thread(
        target=feed.add_batch, args=([payload("after-1", 2), payload("after-2", 3)], 5, 0)
    )
    batch.start()
    fresh = await next_event(response, "anomalies")
    batch.join()
    assert isinstance(fresh, dict)
    assert [a["id"] for a in fresh["anomalies"]] == ["after-2", "after-1"]
    stats = await next_event(response, "stats")
    assert isinstance(stats, dict) and stats["scored"] == 13 and stats["anomalies"] == 3
    response.close()


async def test_a_model_swapped_in_on_the_data_path_thread_reaches_open_pages(
    client: Client, feed: AnomalyFeed
) -> None:
    response = await client.get("/events")
    await next_event(response, "snapshot")
    newer = dataclasses.replace(MODEL, version="20261203T090000Z", sha256="77" * 32)
    swap = threading.Thread(target=feed.set_model, args=(newer,))
    swap.start()
    config = await next_event(response, "config")
    swap.join()
    assert isinstance(config, dict)
    assert config["model"]["version"] == "20261203T090000Z"
    assert config["model"]["sha256"] == "77" * 32
    response.close()
    again = await client.get("/events")  # a page opened later starts with it
    snapshot = await next_event(again, "snapshot")
    assert isinstance(snapshot, dict) and snapshot["config"]["model"]["version"] == newer.version
    again.close()


async def test_a_payload_with_line_breaks_and_markup_stays_one_event_line(
    client: Client, feed: AnomalyFeed
) -> None:
    nasty = "a\nevent: snapshot\ndata: {}\r\n\r\n</script><script>alert(1)</script>"
    feed.add_batch([payload(nasty, 1)], scored=1, dead_letters=0)
    response = await client.get("/events")
    snapshot = await next_event(response, "snapshot")
    assert isinstance(snapshot, dict)
    assert [a["id"] for a in snapshot["anomalies"]] == [nasty]
    response.close()


async def test_a_server_shutdown_ends_open_streams() -> None:
    feed = AnomalyFeed(10, MODEL)
    app = server_app(DataPathStatus(), feed)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/events")
        await next_event(response, "snapshot")
        await app.shutdown()  # what the runner does first when the worker stops
        remainder = await asyncio.wait_for(response.content.read(), timeout=60)
        assert b"event: anomalies" not in remainder  # it simply ended
        assert feed.subscribers == 0


async def test_without_the_page_only_the_probes_answer(status: DataPathStatus) -> None:
    async with TestClient(TestServer(server_app(status, None))) as client:
        for path in ("/", "/events", "/static/app.js", "/static/style.css"):
            assert (await client.get(path)).status == 404, path
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/ready")).status == 503
