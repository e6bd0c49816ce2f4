"""Trace context through the real worker on the real broker: an input's `traceparent` on each
of its outputs with a span id of its own, passed headers, and one span per batch sent over
OTLP to a real Jaeger, read back from Jaeger's query API."""

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import ConsumerRecord

from conftest import StartWorker
from jaeger_harness import Jaeger
from service.dataplane.tracecontext import parse_traceparent
from service.samples import SEED_TEST
from service.schemas import HEADER_MODEL_VERSION, HEADER_REASON
from service.scoring.images import read_images
from service.scoring.model import Model, load_model
from worker_harness import (
    WorkerProcess,
    WorkerTopics,
    consume_until,
    metric_samples,
    pixelwatch_model,
    produce,
)

pytestmark = pytest.mark.kafka


def traceparent(flags: str = "01") -> tuple[str, str, bytes]:
    """A new trace id, parent span id and their `traceparent` header value."""
    trace, span = secrets.token_hex(16), secrets.token_hex(8)
    return trace, span, f"00-{trace}-{span}-{flags}".encode()


def image(ident: str, pixels: np.ndarray) -> bytes:
    return orjson.dumps({"id": ident, "pixels": pixels}, option=orjson.OPT_SERIALIZE_NUMPY)


def headers_of(record: ConsumerRecord) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for name, value in record.headers:
        found.setdefault(name, []).append(value)
    return found


@pytest.fixture(scope="module")
def live(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


async def wait_for_shadow(worker: WorkerProcess, version: str, timeout: float = 60) -> None:
    """Until the worker reports `version` as its shadow model."""
    deadline = time.monotonic() + timeout
    while True:
        assert worker.alive(), worker.output()[-2000:]
        with contextlib.suppress(OSError):  # the metrics page may not be up yet
            samples = metric_samples(worker, "pixelwatch_shadow_model_info")
            if any(labels.get("version") == version and v == 1 for labels, v in samples):
                return
        assert time.monotonic() < deadline, "the shadow model was not adopted"
        await asyncio.sleep(0.3)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_an_inputs_trace_continues_on_each_of_its_outputs_with_a_span_id_of_its_own(
    guarantee: str,
    kafka_bootstrap: str,
    topics: WorkerTopics,
    start_worker: StartWorker,
    live: Model,
    candidate_model_path: Path,
) -> None:
    shadow = load_model(candidate_model_path)
    await pixelwatch_model(kafka_bootstrap, topics, "push", str(live.path))
    await pixelwatch_model(kafka_bootstrap, topics, "push", str(shadow.path), "--shadow")
    worker = start_worker(
        PIXELWATCH_MODEL="",
        PIXELWATCH_PARTITIONS="1",
        PIXELWATCH_PASS_HEADERS="x-request-id,acme-*",
        PIXELWATCH_PROCESSING_GUARANTEE=guarantee,
    )
    worker.wait_serving()
    await wait_for_shadow(worker, shadow.version)

    pixels = read_images(SEED_TEST).pixels
    flagged = live.score(pixels).anomaly
    normal, odd = int(np.flatnonzero(~flagged)[0]), int(np.flatnonzero(flagged)[0])
    t_normal, s_normal, tp_normal = traceparent()
    t_odd, s_odd, tp_odd = traceparent("00")  # not sampled: the flags travel as they are
    t_dead, s_dead, tp_dead = traceparent()
    await produce(
        kafka_bootstrap,
        topics.images,
        [
            (
                b"normal",
                image("normal", pixels[normal]),
                [
                    ("traceparent", tp_normal),
                    ("x-request-id", b"req-1"),
                    ("acme-tenant", b"blue\nFORGED LINE"),
                    ("dropped", b"not passed"),
                    (HEADER_MODEL_VERSION, b"forged"),
                ],
            ),
            (
                b"odd",
                image("odd", pixels[odd]),
                [("traceparent", tp_odd), ("tracestate", b"c=t61r")],
            ),
            (b"dead", b"{not json", [("traceparent", tp_dead), ("x-request-id", b"req-3")]),
            (b"malformed", image("malformed", pixels[normal]), [("traceparent", b"00-abc-def-01")]),
            (b"plain", image("plain", pixels[normal])),
        ],
    )
    records = await consume_until(
        kafka_bootstrap,
        [topics.scores, topics.anomalies, topics.dlq, topics.shadow],
        lambda r: (
            len(r[topics.scores]) >= 4
            and len(r[topics.anomalies]) >= 1
            and len(r[topics.dlq]) >= 1
            and len(r[topics.shadow]) >= 4
        ),
        alive=worker.alive,
    )
    scores = {r.key: headers_of(r) for r in records[topics.scores]}
    anomalies = {r.key: headers_of(r) for r in records[topics.anomalies]}
    shadows = {r.key: headers_of(r) for r in records[topics.shadow]}
    [dead] = [headers_of(r) for r in records[topics.dlq]]
    assert sorted(scores) == sorted(shadows) == [b"malformed", b"normal", b"odd", b"plain"]
    assert list(anomalies) == [b"odd"]

    seen_spans: list[str] = []

    def continues(headers: dict[str, list[bytes]], trace: str, parent: str, flags: str) -> None:
        [value] = headers["traceparent"]
        child = parse_traceparent(value)
        assert child is not None, value
        assert (child.trace_id, child.flags) == (trace, flags)
        assert child.span_id != parent
        seen_spans.append(child.span_id)

    for outputs in (scores, shadows):
        continues(outputs[b"normal"], t_normal, s_normal, "01")
        continues(outputs[b"odd"], t_odd, s_odd, "00")
    continues(anomalies[b"odd"], t_odd, s_odd, "00")
    continues(dead, t_dead, s_dead, "01")
    assert len(set(seen_spans)) == len(seen_spans), "every output has a span id of its own"

    # The tracestate travels with its traceparent, on every output of that input.
    assert scores[b"odd"]["tracestate"] == anomalies[b"odd"]["tracestate"] == [b"c=t61r"]
    # Passed headers: named or prefixed, escaped; the rest dropped; ours never overwritten.
    assert scores[b"normal"]["x-request-id"] == shadows[b"normal"]["x-request-id"] == [b"req-1"]
    assert scores[b"normal"]["acme-tenant"] == [b"blue\\nFORGED LINE"]
    assert "dropped" not in scores[b"normal"]
    assert scores[b"normal"][HEADER_MODEL_VERSION] == [live.version.encode()]
    assert shadows[b"normal"][HEADER_MODEL_VERSION] == [live.version.encode()]
    # A malformed traceparent is not carried, and costs its image nothing.
    assert "traceparent" not in scores[b"malformed"] and "traceparent" not in scores[b"plain"]
    assert "x-request-id" not in scores[b"plain"]
    # A dead letter keeps its input's headers for replay, the trace continued.
    assert dead[HEADER_REASON] == [b"invalid_json"] and dead["x-request-id"] == [b"req-3"]
    assert worker.stop() == 0


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    with Jaeger(tmp_path_factory.mktemp("jaeger")) as running:
        yield running


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span["tags"]}


async def test_each_batch_is_one_span_in_jaeger_linked_to_its_inputs_traces(
    kafka_bootstrap: str,
    topics: WorkerTopics,
    start_worker: StartWorker,
    live: Model,
    jaeger: Jaeger,
) -> None:
    service = f"pixelwatch-{topics.run}"
    worker = start_worker(
        PIXELWATCH_PARTITIONS="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=jaeger.otlp_endpoint,
        OTEL_SERVICE_NAME=service,
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    worker.wait_serving()
    pixels = read_images(SEED_TEST).pixels
    expected_anomalies = int(live.score(pixels).anomaly.sum())
    assert expected_anomalies >= 1
    traced = [traceparent() for _ in pixels]
    sent = [
        (f"img-{n}".encode(), image(f"img-{n}", px), [("traceparent", tp)])
        for n, (px, (_, _, tp)) in enumerate(zip(pixels, traced, strict=True))
    ]
    sent.append((b"untraced", image("untraced", pixels[0]), []))
    await produce(kafka_bootstrap, topics.images, sent)
    await consume_until(
        kafka_bootstrap, [topics.scores], lambda r: len(r[topics.scores]) >= len(sent)
    )

    deadline = time.monotonic() + 30
    while True:
        spans = jaeger.spans(service)
        if sum(int(tags(s)["pixelwatch.batch.size"]) for s in spans) >= len(sent):
            break
        assert time.monotonic() < deadline, f"spans in Jaeger: {spans}\n{jaeger.output()[-2000:]}"
        await asyncio.sleep(0.3)

    assert sum(int(tags(s)["pixelwatch.batch.size"]) for s in spans) == len(sent)
    assert sum(int(tags(s)["pixelwatch.batch.anomalies"]) for s in spans) == expected_anomalies
    links = set()
    for span in spans:
        found = tags(span)
        assert span["operationName"] == f"process {topics.images}"
        assert found["span.kind"] == "consumer"
        assert found[HEADER_MODEL_VERSION] == live.version
        assert found["messaging.destination.name"] == topics.images
        assert not [r for r in span["references"] if r["refType"] == "CHILD_OF"], "a root span"
        # The batch is a trace of its own, linked to each producer's.
        assert span["traceID"] not in {trace for trace, _, _ in traced}
        links |= {(r["traceID"], r["spanID"]) for r in span["references"]}
    assert links == {(trace, parent) for trace, parent, _ in traced}
    assert worker.stop() == 0
