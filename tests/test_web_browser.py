"""The anomaly page in a real browser (headless chromium): what it shows, live, and escaped.

The first test streams the course's test images, normal images and noise through the real
broker and the real worker, and reads the page as a person would see it. Set
PIXELWATCH_SCREENSHOT=PATH to also copy its screenshot there (`make screenshot` does, for
the README and the docs).
"""

import asyncio
import contextlib
import dataclasses
import datetime
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from selenium.webdriver.remote.webdriver import WebDriver

from browser_harness import cards, heat, ink, js_fixed, text, wait, wait_for_cards
from kafka_messages import image_json
from service.dataplane.status import DataPathStatus
from service.samples import SEED_TEST, SEED_TRAIN
from service.schemas import FullScoreMessage
from service.scoring.images import read_images
from service.scoring.model import load_model
from service.web.feed import AnomalyFeed
from service.web.routes import add_page_routes, add_probe_routes, secure
from web_fixtures import MODEL, score_message
from worker_harness import (
    WorkerProcess,
    WorkerTopics,
    consume_until,
    produce,
    wait_for_topic,
    worker_env,
)

SCRIPT_ID: Final = "<script>window.pwned = 'id'</script>"
INJECTED: Final = "#anomalies script, #anomalies img, #anomalies svg, #anomalies b, #anomalies i"


def message(ident: str, pixels: np.ndarray) -> tuple[bytes, bytes]:
    return ident.encode(), image_json(pixels, id=ident)


def iso_ms(ts: int) -> str:
    """JavaScript's `new Date(ts).toISOString()`."""
    moment = datetime.datetime.fromtimestamp(ts / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts % 1000:03d}Z"


def check_card(card: dict[str, Any], score: FullScoreMessage, metric: str) -> None:
    """One card against the score message the worker published for that image."""
    assert card["similarity"] == f"{js_fixed(score.similarity, 4)} {metric}", card["id"]
    assert card["threshold"] == js_fixed(score.threshold, 4)
    assert card["model"] == score.model.version
    assert card["sha256"] == f"sha256 {score.model.sha256}"
    assert card["source"] == f"partition {score.source.partition} · offset {score.source.offset}"
    assert card["topic"] == f"topic {score.source.topic}"
    assert card["time"] == iso_ms(score.ts)
    assert card["detected"] == score.detected_at
    assert card["input"] == [ink(p) for p in score.pixels]
    assert card["reconstruction"] == [ink(r) for r in score.reconstruction]
    differences = [abs(p - r) for p, r in zip(score.pixels, score.reconstruction, strict=True)]
    assert card["difference"] == [heat(d) for d in differences]


@pytest.mark.kafka
@pytest.mark.slow
def test_the_page_shows_exactly_the_flagged_images_and_a_new_one_arrives_without_reload(
    kafka_bootstrap: str, seed_model_path: Path, tmp_path: Path, browser: WebDriver
) -> None:
    topics = WorkerTopics()
    env = worker_env(
        kafka_bootstrap,
        topics,
        seed_model_path,
        tmp_path / "state",
        PIXELWATCH_PARTITIONS="2",
        PIXELWATCH_METRICS_HOST="127.0.0.1",
        PIXELWATCH_WEB_ANOMALIES="50",
        # The rates cover the whole test, however slow the machine.
        PIXELWATCH_WEB_RATE_WINDOW="3600",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        model = load_model(seed_model_path)
        rng = np.random.default_rng(13)
        course, normal = read_images(SEED_TEST).pixels, read_images(SEED_TRAIN).pixels
        noise = (rng.random((4, 64)) < 0.5).astype(np.float32)
        images = np.concatenate([course, normal, noise])
        ids = (
            [f"course-{i}" for i in range(len(course))]
            + [f"normal-{i}" for i in range(len(normal))]
            + [SCRIPT_ID] + [f"noise-{i}" for i in range(1, len(noise))]
        )  # fmt: skip
        verdicts = model.score(images).anomaly
        flagged = {i for i, a in zip(ids, verdicts, strict=True) if a}
        assert SCRIPT_ID in flagged and "course-2" in flagged  # noise and the corners image
        assert any(not a for a in verdicts[: len(course)])  # the course's set has normal ones

        assert asyncio.run(wait_for_topic(kafka_bootstrap, topics.images, worker.alive)) == 2
        batch = [message(i, p) for i, p in zip(ids, images, strict=True)]
        asyncio.run(produce(kafka_bootstrap, topics.images, [*batch, (b"bad", b"not json")]))
        published = asyncio.run(
            consume_until(
                kafka_bootstrap,
                [topics.anomalies],
                lambda r: len(r[topics.anomalies]) >= len(flagged),
                alive=worker.alive,
            )
        )
        scores = {
            s.id: s
            for s in (
                FullScoreMessage.model_validate_json(r.value) for r in published[topics.anomalies]
            )
        }
        assert set(scores) == flagged

        browser.get(f"http://127.0.0.1:{env['PIXELWATCH_METRICS_PORT']}/")
        consumed = len(ids) + 1
        wait(browser, lambda b: text(b, "dlq-rate").endswith(f"(1 of {consumed})"))
        shown = wait_for_cards(browser, len(flagged))
        assert {card["id"] for card in shown} == flagged
        for card in shown:
            check_card(card, scores[card["id"]], model.metadata.metric)

        assert browser.execute_script(f"return document.querySelectorAll('{INJECTED}').length") == 0
        assert browser.execute_script("return window.pwned === undefined") is True
        assert text(browser, "connection") == "live"
        assert text(browser, "model").startswith(f"{model.version} (binary, 8x8)")
        assert text(browser, "threshold") == f"hamming < {js_fixed(model.metadata.threshold, 4)}"
        rate = js_fixed(100 * len(flagged) / len(ids), 1)
        assert text(browser, "anomaly-rate") == f"{rate}% ({len(flagged)} of {len(ids)})"
        assert text(browser, "dlq-rate") == f"{js_fixed(100 / consumed, 1)}% (1 of {consumed})"

        # A new anomaly appears on top, in the same document: no reload.
        browser.execute_script("window.sameDocument = 'yes'")
        asyncio.run(produce(kafka_bootstrap, topics.images, [message("late-arrival", noise[1])]))
        wait(browser, lambda b: cards(b)[0]["id"] == "late-arrival")
        assert browser.execute_script("return window.sameDocument") == "yes"
        latest = cards(browser)
        assert [c["id"] for c in latest[1:]] == [c["id"] for c in shown]
        # By key: records of the topic's two partitions come back in no particular order.
        [late] = [
            r
            for r in asyncio.run(
                consume_until(
                    kafka_bootstrap,
                    [topics.anomalies],
                    lambda r: len(r[topics.anomalies]) > len(flagged),
                    alive=worker.alive,
                )
            )[topics.anomalies]
            if r.key == b"late-arrival"
        ]
        check_card(latest[0], FullScoreMessage.model_validate_json(late.value), "hamming")

        screenshot = tmp_path / "anomaly-page.png"
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        if target := os.environ.get("PIXELWATCH_SCREENSHOT"):
            shutil.copyfile(screenshot, target)
    finally:
        worker.stop(signal.SIGTERM)


@contextlib.asynccontextmanager
async def page_server(feed: AnomalyFeed) -> AsyncIterator[BaseTestServer]:
    """The worker's page and probes on a local port, showing `feed`."""
    app = web.Application()
    secure(app)
    add_probe_routes(app, DataPathStatus(), 30.0)
    add_page_routes(app, feed)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server


async def test_markup_in_every_field_of_a_payload_shows_as_plain_text(
    browser: WebDriver,
) -> None:
    # Fields our worker fills itself (model, topic, time) could still be anything on the
    # topic the page's data path reads: every string is treated alike.
    hostile = score_message(
        SCRIPT_ID,
        metric="<i>hamming</i>",
        model={"version": "<img src=x onerror=\"window.pwned='v'\">", "sha256": '"><svg onload=1>'},
        source={"topic": '</li><li class="x"><b>forged</b>', "partition": 3, "offset": 9},
        detected_at="<b>bold</b> &amp; &lt;",
    )
    feed = AnomalyFeed(10, MODEL)
    async with page_server(feed) as server:
        feed.add_batch([orjson.dumps(hostile)], scored=1, dead_letters=0)
        await asyncio.to_thread(browser.get, str(server.make_url("/")))
        [card] = await asyncio.to_thread(wait_for_cards, browser, 1)
        assert card["id"] == SCRIPT_ID
        assert card["similarity"] == "0.2500 <i>hamming</i>"
        assert card["model"] == hostile["model"]["version"]
        assert card["sha256"] == f"sha256 {hostile['model']['sha256']}"
        assert card["topic"] == f"topic {hostile['source']['topic']}"
        assert card["detected"] == hostile["detected_at"]
        injected = f"return document.querySelectorAll('{INJECTED}, li.x').length"
        assert await asyncio.to_thread(browser.execute_script, injected) == 0
        pwned = await asyncio.to_thread(browser.execute_script, "return window.pwned")
        assert pwned is None


async def test_a_64x64_anomaly_shows_every_pixel_sharp_at_twice_its_size(
    browser: WebDriver, tmp_path: Path
) -> None:
    # A one-pixel checkerboard: any smoothing or a scale that is not a whole number blurs it.
    side = 64
    board = (np.indices((side, side)).sum(axis=0) % 2).astype(np.float32).ravel()
    big = dataclasses.replace(MODEL, width=side, height=side)
    message = score_message("wafer-1", pixels=board.tolist(), reconstruction=(1 - board).tolist())
    feed = AnomalyFeed(10, big)
    async with page_server(feed) as server:
        feed.add_batch([orjson.dumps(message)], scored=1, dead_letters=0)
        await asyncio.to_thread(browser.get, str(server.make_url("/")))
        [card] = await asyncio.to_thread(wait_for_cards, browser, 1)
        assert card["input"] == [ink(float(p)) for p in board]
        sizes = await asyncio.to_thread(
            browser.execute_script,
            "return [...document.querySelectorAll('#anomalies canvas')]"
            ".map(c => [c.width, c.height, c.clientWidth])",
        )
        assert sizes == [[side, side, 2 * side]] * 3, sizes
        screenshot = tmp_path / "page-64x64.png"
        assert await asyncio.to_thread(browser.save_screenshot, str(screenshot))
