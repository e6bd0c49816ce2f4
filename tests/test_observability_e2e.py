"""A real Prometheus scrapes a real worker on the real broker while images flow; every
dashboard query must then return data, the counters must add up, and the alert rules must
see the real metric names."""

import asyncio
import json
import math
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from prometheus_harness import PrometheusServer
from service.samples import SEED_TEST, SEED_TRAIN
from service.schemas import DeadLetterReason
from service.scoring.images import read_images
from service.scoring.model import load_model
from worker_harness import (
    WorkerProcess,
    WorkerTopics,
    consume_until,
    pixelwatch_model,
    produce,
    wait_for_topic,
    worker_env,
)

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "pixelwatch.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

SCRAPE_SECONDS = 1
# What Grafana puts in for its built-in variables at a 1s step and a 1s scrape interval
# ($__rate_interval = max($__interval + scrape interval, 4 * scrape interval)).
GRAFANA_VARIABLES = {"__rate_interval": "4s", "__interval": "1s"}
# The dashboard's own variables at their defaults: job pixelwatch, every namespace.
DASHBOARD_VARIABLES = {"job": "pixelwatch", "namespace": ".*"}

INVALID: dict[DeadLetterReason, bytes] = {
    DeadLetterReason.OVERSIZED: b'{"pixels": "' + b"." * 5000 + b'"}',
    DeadLetterReason.INVALID_JSON: b"{not json",
    DeadLetterReason.SCHEMA: b'{"pixels": {"a": 1}}',
    DeadLetterReason.PIXEL_COUNT: b'{"pixels": [0, 1, 0]}',
    DeadLetterReason.PIXEL_VALUE: b'{"pixels": [' + b"0, " * 63 + b"7]}",
}
WAVES = 3
COMMIT_SECONDS = 8
# Series a healthy run must not have (no output is refused), or that may rightly read zero at
# every scrape (outputs are confirmed within milliseconds of being sent).
HEALTHY_RUN_QUIET = {
    ("Outputs refused by the broker per second", "A"): "absent",
    ("Consumed, committed and unconfirmed", "C"): "may be zero",
    # The candidate (the course's model, another seed) may well agree on every image.
    ("Shadow model: verdicts agreeing with the live model", "B"): "may be zero",
    ("Topic partitions", "B"): "may be zero",  # every topic has PIXELWATCH_PARTITIONS
}


def promql(expr: str, range_seconds: int) -> str:
    """A panel's expression with Grafana's built-in and the dashboard's variables substituted."""
    values = {**GRAFANA_VARIABLES, **DASHBOARD_VARIABLES, "__range": f"{range_seconds}s"}
    for name, value in values.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside
        if panel["type"] != "row":
            yield panel


def finite(samples: list[dict[str, Any]]) -> list[float]:
    values = [
        float(v) for series in samples for _, v in series.get("values", [series.get("value")])
    ]
    return [v for v in values if math.isfinite(v)]


async def test_dashboard_queries_return_data_and_counters_match_what_was_sent(
    kafka_bootstrap: str,
    seed_model_path: Path,
    candidate_model_path: Path,
    topics: WorkerTopics,
    tmp_path: Path,
) -> None:
    model = load_model(seed_model_path)
    rng = np.random.default_rng(4)
    pool = np.concatenate(
        [
            np.tile(
                np.concatenate([read_images(SEED_TRAIN).pixels, read_images(SEED_TEST).pixels]),
                (5, 1),
            ),
            (rng.random((5, 64)) < 0.5).astype(np.float32),
        ]
    )
    verdicts = model.score(pool).anomaly
    waves = [
        [
            (f"w{w}-{i}".encode(), orjson.dumps({"pixels": px}, option=orjson.OPT_SERIALIZE_NUMPY))
            for i, px in enumerate(pool)
        ]
        + [(f"w{w}-{reason}".encode(), value) for reason, value in INVALID.items()]
        for w in range(WAVES)
    ]
    sent = sum(len(wave) for wave in waves)
    expected = {
        "anomaly": WAVES * int(verdicts.sum()),
        "normal": WAVES * int((~verdicts).sum()),
        "invalid": WAVES * len(INVALID),
    }
    assert sum(expected.values()) == sent
    assert expected["anomaly"] / (expected["anomaly"] + expected["normal"]) > 0.2  # alerts

    env = worker_env(
        kafka_bootstrap,
        topics,
        seed_model_path,
        tmp_path / "state",
        PIXELWATCH_MAX_MESSAGE_BYTES="4096",
        PIXELWATCH_LAG_INTERVAL="1",
        PIXELWATCH_COMMIT_INTERVAL=str(COMMIT_SECONDS),
        PIXELWATCH_DRIFT_INTERVAL="1",
        PIXELWATCH_DRIFT_MIN_IMAGES="10",
        PIXELWATCH_SUGGEST_THRESHOLD="true",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    prometheus = PrometheusServer(
        tmp_path / "prometheus",
        [f"127.0.0.1:{env['PIXELWATCH_METRICS_PORT']}"],
        [ALERTS],
        interval=f"{SCRAPE_SECONDS}s",
    )
    try:
        await prometheus.wait_ready()
        start = time.time()
        assert await wait_for_topic(kafka_bootstrap, topics.images, worker.alive) == 4
        # Scraped before the first image, so every increase is seen from zero.
        await prometheus.wait_for('sum(up{job="pixelwatch"})', 1)
        await prometheus.wait_for("sum(pixelwatch_images_total)", 0)

        # Lag is counted from the group's committed offsets: once the first wave is
        # committed on every partition, the next waves wait visibly until the next commit,
        # COMMIT_SECONDS later (far longer than a lag refresh plus a scrape).
        await produce(kafka_bootstrap, topics.images, waves[0])
        committed = f'pixelwatch_committed_offset{{topic="{topics.images}"}} > 0'
        await prometheus.wait_for(f"count({committed})", 4, seconds=COMMIT_SECONDS + 10)
        # A candidate model scores the next waves in shadow, published while the worker runs.
        await pixelwatch_model(
            kafka_bootstrap, topics, "push", str(candidate_model_path), "--shadow"
        )
        await prometheus.wait_for("count(pixelwatch_shadow_model_info)", 1)
        for wave in waves[1:]:  # a few seconds of traffic, so rates span several scrapes
            await produce(kafka_bootstrap, topics.images, wave)
            await asyncio.sleep(1)
        await prometheus.wait_for("sum(pixelwatch_consumer_lag) > bool 0", 1)
        await consume_until(
            kafka_bootstrap,
            [topics.scores, topics.dlq],
            lambda r: len(r[topics.scores]) + len(r[topics.dlq]) >= sent,
            alive=worker.alive,
        )

        # Counters: what Prometheus scraped is exactly what was produced.
        await prometheus.wait_for("sum(pixelwatch_images_total)", sent)
        by_outcome = await prometheus.query("pixelwatch_images_total")
        assert {s["metric"]["outcome"]: float(s["value"][1]) for s in by_outcome} == expected
        by_reason = await prometheus.query("pixelwatch_dlq_total")
        assert {s["metric"]["reason"]: float(s["value"][1]) for s in by_reason} == {
            reason.value: WAVES if reason in INVALID else 0 for reason in DeadLetterReason
        }
        assert (
            await prometheus.value("sum(pixelwatch_similarity_count)") == sent - expected["invalid"]
        )
        assert await prometheus.value("sum(pixelwatch_batch_size_sum)") == sent
        [info] = await prometheus.query("pixelwatch_model_info")
        assert info["metric"]["sha256"] == model.sha256 and info["metric"]["metric"] == "hamming"
        # The drift window holds every scored image; the shadow saw the waves after its push.
        scored = sent - expected["invalid"]
        await prometheus.wait_for("sum(pixelwatch_drift_window_images)", scored)
        shadowed = await prometheus.value("sum(pixelwatch_shadow_verdicts_total)")
        assert shadowed is not None and 0 < shadowed <= scored
        assert await prometheus.value('sum(pixelwatch_model_reloads_total{result="ok"})') == 2
        assert await prometheus.value("max(pixelwatch_threshold)") == model.metadata.threshold
        # Lag: one series per input partition, down to zero once the offsets are committed.
        await prometheus.wait_for(f'count(pixelwatch_consumer_lag{{topic="{topics.images}"}})', 4)
        await prometheus.wait_for("sum(pixelwatch_consumer_lag)", 0, seconds=COMMIT_SECONDS + 10)

        # Every dashboard query returns data over the run, as Grafana would ask for it.
        board = json.loads(DASHBOARD.read_text())
        end = time.time()
        span = math.ceil(end - start)
        checked = 0
        for panel in panels(board):
            for target in panel["targets"]:
                expr = promql(target["expr"], span)
                if target.get("instant"):
                    result = await prometheus.query(expr)
                else:
                    result = await prometheus.query_range(expr, start, end, SCRAPE_SECONDS)
                where = f"{panel['title']!r} {target['refId']}: {expr}"
                checked += 1
                expected_quiet = HEALTHY_RUN_QUIET.get((panel["title"], target["refId"]))
                if expected_quiet == "absent":
                    assert not result, f"data for {where} in a healthy run"
                    continue
                assert result, f"no data for {where}"
                if expected_quiet == "may be zero":
                    continue
                # Zero throughout would be a series that exists but never moves.
                assert any(finite(result)), f"only zeros or NaN for {where}"
        assert checked >= 20

        # The heatmap title's threshold variable finds the model's threshold.
        [variable] = [v for v in board["templating"]["list"] if v["name"] == "threshold"]
        inner = re.fullmatch(r"query_result\((.+)\)", variable["query"])
        assert inner, variable["query"]
        value = await prometheus.value(promql(inner.group(1), span))
        line = f"{{}} {value} {int(end * 1000)}"  # how Grafana lists a query_result sample
        found = re.search(variable["regex"].strip("/"), line)
        assert found and float(found.group(1)) == model.metadata.threshold

        # The alert rules load, evaluate cleanly and react to the real metric names.
        groups = (await prometheus.api("rules"))["groups"]
        rules = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
        assert len(rules) == 9 and all(r["health"] == "ok" for r in rules), rules
        deadline = time.monotonic() + 30
        while True:
            alerts = (await prometheus.api("alerts"))["alerts"]
            states = Counter((a["labels"]["alertname"], a["state"]) for a in alerts)
            wanted = {
                ("PixelwatchAnomalyRateHigh", "pending"): 1,
                ("PixelwatchDeadLetters", "pending"): len(INVALID),
                # The seed model's reference is its two training images, which it reconstructs
                # perfectly; most of this stream scores below them.
                ("PixelwatchSimilarityDrift", "pending"): 1,
            }
            if states == wanted:
                break
            assert time.monotonic() < deadline, f"alerts {dict(states)}, expected {wanted}"
            await asyncio.sleep(0.5)

        assert worker.stop() == 0, worker.output()[-3000:]
    finally:
        worker.stop(signal.SIGKILL)
        prometheus.stop()
