"""AnomalyFeed: what the page gets from the data path, and from which thread."""

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest

from kafka_messages import kafka_message
from service.dataplane.pipeline import BatchScorer
from service.samples import SEED_TEST
from service.scoring.images import read_images
from service.scoring.model import load_model
from service.web.feed import REFRESH_INTERVAL, AnomalyFeed, PageModel
from web_fixtures import MODEL, payload, score_message


@dataclass
class Clock:
    now: float = 5000.0

    def __call__(self) -> float:
        return self.now


def ids(entries: list[dict[str, object]]) -> list[str]:
    return [str(e["id"]) for e in entries]


def test_the_last_n_anomalies_are_kept_newest_first_with_rising_sequence_numbers() -> None:
    feed = AnomalyFeed(3, MODEL)
    feed.add_batch([payload("a", 1), payload("b", 2)], scored=10, dead_letters=0)
    assert ids(feed.snapshot()) == ["b", "a"]
    feed.add_batch([payload("c", 3), payload("d", 4)], scored=10, dead_letters=0)
    shown = feed.snapshot()
    assert ids(shown) == ["d", "c", "b"]
    assert [e["seq"] for e in shown] == [4, 3, 2]
    assert ids(feed.since(3)) == ["d"]
    expected = {k: v for k, v in score_message("d", 4).items() if k != "scores"}
    assert shown[0] == {"seq": 4, **expected}


def test_a_batch_larger_than_the_page_keeps_only_its_newest_anomalies() -> None:
    feed = AnomalyFeed(2, MODEL)
    feed.add_batch([payload(f"m{i}", i) for i in range(1000)], scored=1000, dead_letters=0)
    assert ids(feed.snapshot()) == ["m999", "m998"]
    assert feed.stats()["anomalies"] == 1000  # the counts cover every one


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (b"{not json", "invalid JSON"),
        (orjson.dumps(score_message(anomaly=False)), "not an anomaly"),
        (orjson.dumps({k: v for k, v in score_message().items() if k != "pixels"}), "no pixels"),
        (orjson.dumps(score_message(pixels=[0.0] * 64)), "another image size"),
        (orjson.dumps(score_message(reconstruction=[0.5] * 3)), "short reconstruction"),
        (orjson.dumps(score_message(similarity=1.5)), "similarity out of range"),
        (orjson.dumps(score_message(id=12345)), "id not a string"),
        (orjson.dumps(score_message(ts=2**63)), "ts beyond int64"),
        (
            orjson.dumps(score_message(source={"topic": "t", "partition": -1, "offset": 0})),
            "negative partition",
        ),
        (orjson.dumps(score_message(model="v1")), "model not an object"),
    ],
)
def test_a_payload_the_page_cannot_show_is_counted_and_left_out(bad: bytes, why: str) -> None:
    feed = AnomalyFeed(5, MODEL)
    feed.add_batch([payload("good-1", 1), bad, payload("good-2", 2)], scored=3, dead_letters=0)
    assert ids(feed.snapshot()) == ["good-2", "good-1"], why
    assert feed.rejected == 1
    assert feed.stats()["rejected"] == 1


def test_long_strings_are_capped_and_markup_is_passed_on_as_plain_text() -> None:
    feed = AnomalyFeed(5, MODEL)
    markup = '<img src=x onerror="alert(1)">'
    feed.add_batch(
        [
            payload(
                "<script>alert(1)</script>" + "x" * 1000,
                model={"version": markup, "sha256": "s" * 500},
                detected_at=markup,
            )
        ],
        scored=1,
        dead_letters=0,
    )
    [shown] = feed.snapshot()
    assert len(shown["id"]) == 256
    assert shown["id"].startswith("<script>alert(1)</script>xx") and shown["id"].endswith("…")
    assert shown["model"] == {"version": markup, "sha256": "s" * 63 + "…"}
    assert shown["detected_at"] == markup


def test_rates_count_the_batches_of_the_last_window_only() -> None:
    clock = Clock()
    feed = AnomalyFeed(5, MODEL, window=60.0, clock=clock)
    assert feed.stats() == {
        "seconds": 0.0, "scored": 0, "anomalies": 0, "dead_letters": 0, "rejected": 0,
    }  # fmt: skip
    feed.add_batch([payload("a")], scored=40, dead_letters=2)
    clock.now += 30
    feed.add_batch([payload("b"), payload("c")], scored=60, dead_letters=0)
    clock.now += 10
    assert feed.stats() == {
        "seconds": 40.0, "scored": 100, "anomalies": 3, "dead_letters": 2, "rejected": 0,
    }  # fmt: skip
    clock.now += 25  # the first batch is now 65 s old
    assert feed.stats() == {
        "seconds": 60.0, "scored": 60, "anomalies": 2, "dead_letters": 0, "rejected": 0,
    }  # fmt: skip
    clock.now += 60
    assert feed.stats()["scored"] == 0


async def test_a_batch_from_another_thread_wakes_a_subscriber_on_the_event_loop() -> None:
    feed = AnomalyFeed(5, MODEL)
    feed.bind(asyncio.get_running_loop())
    feed.subscribe()
    version = feed.version
    assert feed.snapshot() == []

    def data_path() -> None:
        feed.add_batch([payload("from-thread")], scored=1, dead_letters=0)

    thread = threading.Thread(target=data_path)
    waiting = asyncio.ensure_future(feed.wait(version, timeout=60.0))
    await asyncio.sleep(0)  # the subscriber waits before the batch arrives
    thread.start()
    latest = await waiting
    thread.join()
    assert latest > version
    assert ids(feed.since(0)) == ["from-thread"]


async def test_a_busy_data_path_refreshes_the_watchers_at_most_every_refresh_interval() -> None:
    loop = asyncio.get_running_loop()
    feed = AnomalyFeed(5, MODEL)
    feed.bind(loop)
    feed.subscribe()
    start, version = loop.time(), feed.version
    for i in range(100):
        feed.add_batch([payload(f"a{i}", i)], scored=1, dead_letters=0)
    first = await feed.wait(version, timeout=60.0)
    assert first == version + 1  # a hundred batches, one refresh
    feed.add_batch([payload("b", 100)], scored=1, dead_letters=0)
    second = await feed.wait(first, timeout=60.0)
    assert second == first + 1
    assert loop.time() - start >= REFRESH_INTERVAL
    assert ids(feed.since(0)) == ["b", "a99", "a98", "a97", "a96"]


async def test_without_subscribers_a_batch_does_not_wake_the_loop() -> None:
    feed = AnomalyFeed(5, MODEL)
    feed.bind(asyncio.get_running_loop())
    version = feed.version
    feed.add_batch([payload("quiet")], scored=1, dead_letters=0)
    await asyncio.sleep(0.05)
    assert feed.version == version
    assert ids(feed.snapshot()) == ["quiet"]  # parsed when someone looks


async def test_closing_the_feed_releases_waiting_subscribers() -> None:
    feed = AnomalyFeed(5, MODEL)
    feed.bind(asyncio.get_running_loop())
    waiting = asyncio.ensure_future(feed.wait(feed.version, timeout=3600.0))
    await asyncio.sleep(0)
    feed.close()
    await waiting
    assert feed.closed


def test_the_batch_observer_hands_over_the_flagged_images_of_a_real_batch(
    seed_model_path: Path,
) -> None:
    scorer = BatchScorer(load_model(seed_model_path))
    images = read_images(SEED_TEST).pixels
    records = [
        kafka_message(
            orjson.dumps({"id": f"t{i}", "pixels": p}, option=orjson.OPT_SERIALIZE_NUMPY),
            i,
            partition=0,
            key=f"t{i}".encode(),
        )
        for i, p in enumerate(images)
    ]
    records.append(kafka_message(b"broken", len(images), partition=0))
    result = scorer.process(records)
    feed = AnomalyFeed(10, PageModel.of(scorer))
    feed.observe_batch(result, 0.01)

    expected = scorer.model.score(images)
    flagged = [f"t{i}" for i in np.flatnonzero(expected.anomaly)]
    assert flagged  # the course's test images include anomalies
    shown = feed.snapshot()
    assert sorted(ids(shown)) == sorted(flagged)
    for entry in shown:
        index = int(str(entry["id"])[1:])
        assert entry["pixels"] == images[index].tolist()
        assert entry["similarity"] == pytest.approx(float(expected.similarity[index]))
    stats = feed.stats()
    assert (stats["scored"], stats["anomalies"], stats["dead_letters"]) == (
        len(images), len(flagged), 1,
    )  # fmt: skip
