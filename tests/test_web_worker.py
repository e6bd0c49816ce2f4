"""The real worker's HTTP port on the real broker: only our routes, probes, page switch, stop."""

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from conftest import StartWorker
from worker_harness import WorkerProcess, WorkerTopics, wait_for_topic

pytestmark = pytest.mark.kafka

# faust's own views: the router (it reveals the host name), its topics and keys, tables,
# the graph, the assignment and the performance page. Its status index or statistics at `/`
# are replaced by the page, or gone with it (the page-off test).
FAUST_PATHS = (
    "/router/", "/router/topics", "/router/score/", "/table/", "/table/score/", "/graph/",
    "/assignment/", "/performance/",
)  # fmt: skip

LOCAL = "127.0.0.1"  # PIXELWATCH_METRICS_HOST for every worker here


def base_url(worker: WorkerProcess) -> str:
    """The worker's HTTP address, from the environment the harness started it with."""
    return f"http://{worker.env['PIXELWATCH_METRICS_HOST']}:{worker.env['PIXELWATCH_METRICS_PORT']}"


async def get(url: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text(), dict(response.headers)


async def wait_until(
    url: str, accept: Callable[[int, str], bool], worker: WorkerProcess, timeout: float = 90.0
) -> tuple[int, str]:
    """Poll `url` until `accept(status, body)`; fail if the worker exits or time runs out."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        assert worker.alive(), f"the worker exited:\n{worker.output()[-3000:]}"
        try:
            status, body, _ = await get(url)
            last = (status, body)
            if accept(status, body):
                return status, body
        except aiohttp.ClientConnectionError as exc:
            last = exc
        assert time.monotonic() < deadline, f"{url}: last answer {last!r}"
        await asyncio.sleep(0.3)


async def test_the_worker_serves_its_page_probes_and_metrics_and_none_of_fausts_views(
    kafka_bootstrap: str, start_worker: StartWorker
) -> None:
    worker = start_worker(PIXELWATCH_METRICS_HOST=LOCAL, PIXELWATCH_PARTITIONS="2")
    base = base_url(worker)
    await wait_until(f"{base}/ready", lambda status, _: status == 200, worker)
    status, body, _ = await get(f"{base}/ready")
    ready = json.loads(body)
    assert (ready["ready"], ready["partitions"]) == (True, 2)
    status, body, _ = await get(f"{base}/healthz")
    assert status == 200 and json.loads(body)["alive"] is True
    status, body, headers = await get(f"{base}/")
    assert status == 200 and "<title>pixelwatch" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    status, body, _ = await get(f"{base}/metrics")
    assert status == 200 and "pixelwatch_images_total" in body
    assert "pixelwatch_page_clients 0.0" in body
    for path in FAUST_PATHS:
        status, body, _ = await get(f"{base}{path}")
        assert status == 404, (path, body[:200])
    assert worker.stop() == 0


async def test_web_enabled_false_turns_the_page_off_and_keeps_metrics_and_probes(
    kafka_bootstrap: str, start_worker: StartWorker
) -> None:
    worker = start_worker(
        PIXELWATCH_METRICS_HOST=LOCAL, PIXELWATCH_PARTITIONS="1", PIXELWATCH_WEB_ENABLED="false"
    )
    base = base_url(worker)
    await wait_until(f"{base}/ready", lambda status, _: status == 200, worker)
    assert (await get(f"{base}/healthz"))[0] == 200
    status, body, _ = await get(f"{base}/metrics")
    assert status == 200 and "pixelwatch_images_total" in body
    assert "pixelwatch_page_clients" not in body
    for path in ("/", "/events", "/static/app.js", "/static/style.css", *FAUST_PATHS):
        assert (await get(f"{base}{path}"))[0] == 404, path
    assert worker.stop() == 0


async def test_a_worker_left_without_a_partition_is_alive_but_not_ready(
    kafka_bootstrap: str, topics: WorkerTopics, start_worker: StartWorker
) -> None:
    first = start_worker(PIXELWATCH_METRICS_HOST=LOCAL, PIXELWATCH_PARTITIONS="1")
    first_url = base_url(first)
    assert await wait_for_topic(kafka_bootstrap, topics.images, first.alive) == 1
    await wait_until(f"{first_url}/ready", lambda status, _: status == 200, first)
    second = start_worker(PIXELWATCH_METRICS_HOST=LOCAL, PIXELWATCH_PARTITIONS="1")
    second_url = base_url(second)
    await wait_until(f"{second_url}/healthz", lambda status, _: status == 200, second)

    # The group has one partition for two workers: exactly one of them owns it.
    deadline = time.monotonic() + 90
    while True:
        answers = [await get(f"{url}/ready") for url in (first_url, second_url)]
        if sorted(status for status, _, _ in answers) == [200, 503]:
            break
        assert first.alive() and second.alive()
        assert time.monotonic() < deadline, answers
        await asyncio.sleep(0.3)
    [idle] = [json.loads(body) for status, body, _ in answers if status == 503]
    assert idle["reason"] == "no input partition assigned" and idle["partitions"] == 0
    for url in (first_url, second_url):
        assert (await get(f"{url}/healthz"))[0] == 200
    assert first.stop() == 0 and second.stop() == 0


async def test_a_worker_stops_promptly_while_a_browser_holds_the_live_stream(
    kafka_bootstrap: str, start_worker: StartWorker
) -> None:
    worker = start_worker(PIXELWATCH_METRICS_HOST=LOCAL, PIXELWATCH_PARTITIONS="1")
    base = base_url(worker)
    await wait_until(f"{base}/ready", lambda status, _: status == 200, worker)
    async with aiohttp.ClientSession() as session, session.get(f"{base}/events") as stream:
        assert stream.status == 200
        assert (await stream.content.readline()).startswith(b"retry:")
        # aiohttp waits up to 60 s for open handlers at shutdown unless the stream ends.
        assert await asyncio.to_thread(worker.stop, signal.SIGTERM, 30.0) == 0
