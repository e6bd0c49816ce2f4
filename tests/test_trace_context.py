"""Trace context and passed headers, as our own logic: W3C `traceparent` parsing, child span
ids, the PIXELWATCH_PASS_HEADERS rule, and which output of a batch gets whose headers."""

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafka_messages import image_json, kafka_message
from service.config import Settings
from service.dataplane.pipeline import BatchScorer
from service.dataplane.tracecontext import (
    MAX_PASSED,
    PASSED_VALUE_LIMIT,
    Carried,
    PassRule,
    carried,
    carry,
    continued,
    parse_traceparent,
    parse_tracestate,
)
from service.errors import PixelwatchError
from service.observability.tracing import tracing_enabled
from service.samples import SEED_TEST
from service.schemas import HEADER_FORMAT, HEADER_MODEL_VERSION, HEADER_REASON
from service.scoring.images import read_images
from service.scoring.model import Model, load_model

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize(
    "value",
    [
        VALID,
        f"00-{TRACE}-{SPAN}-00",  # not sampled: still valid, flags kept as they are
        f"cc-{TRACE}-{SPAN}-01-what-a-later-version-may-add",
        f"01-{TRACE}-{SPAN}-09",
    ],
)
def test_valid_traceparents_are_read_field_by_field(value: str) -> None:
    parent = parse_traceparent(value.encode())
    assert parent is not None
    assert (parent.trace_id, parent.span_id, parent.flags) == (TRACE, SPAN, value[53:55])


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 is exactly 55 characters
        f"00-{TRACE}-{SPAN}-1",
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}0-01",
        f"00-{TRACE.upper()}-{SPAN}-01",  # lower-case hex only
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"00_{TRACE}_{SPAN}_01",
        f"cc-{TRACE}-{SPAN}-01x",  # a later version must separate what it adds with "-"
        f"00-{TRACE}-{SPAN}-0g",
    ],
)
def test_malformed_traceparents_are_refused(value: str) -> None:
    assert parse_traceparent(value) is None
    assert parse_traceparent(value.encode()) is None


def test_a_traceparent_that_is_not_ascii_is_refused() -> None:
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-0\xe9".encode("latin-1")) is None


@given(st.binary(max_size=80))
def test_any_bytes_parse_or_are_refused_without_raising(raw: bytes) -> None:
    parent = parse_traceparent(raw)
    if parent is not None:
        assert int(parent.trace_id, 16) and int(parent.span_id, 16)


def test_a_child_keeps_trace_and_flags_with_a_new_span_id_each_time() -> None:
    parent = parse_traceparent(f"00-{TRACE}-{SPAN}-01")
    assert parent is not None
    children = [parent.child().decode() for _ in range(50)]
    for child in children:
        again = parse_traceparent(child)
        assert again is not None
        assert (again.trace_id, again.flags) == (TRACE, "01")
        assert again.span_id != SPAN
    assert len({c.split("-")[2] for c in children}) == 50


def test_a_later_version_continues_as_version_00() -> None:
    parent = parse_traceparent(f"cc-{TRACE}-{SPAN}-03-more")
    assert parent is not None
    assert parent.child().decode().startswith(f"00-{TRACE}-")
    assert parent.child().decode().endswith("-03")


def test_tracestate_is_kept_when_valid_and_joined_across_headers() -> None:
    assert parse_tracestate([b"congo=t61rcWkgMzE"]) == b"congo=t61rcWkgMzE"
    assert parse_tracestate([b"rojo=00f067aa0ba902b7", b"congo=t61rcWkgMzE"]) == (
        b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    )
    assert parse_tracestate([b"tenant@vendor=x, ,a=b"]) == b"tenant@vendor=x,a=b"


@pytest.mark.parametrize(
    "values",
    [
        [b"no-equals-sign"],
        [b"UPPER=x"],
        [b"a=1,a=2"],  # a key twice
        [b"a=" + b"x" * 600],  # over 512 characters
        [",".join(f"k{i}=v" for i in range(33)).encode()],  # over 32 members
        [b"a=b\nforged"],
        ["a=\u00e9".encode()],
    ],
)
def test_invalid_tracestate_is_dropped(values: list[bytes]) -> None:
    assert parse_tracestate(values) is None


def test_the_pass_rule_takes_names_and_prefixes_but_never_our_own_headers() -> None:
    rule = PassRule(["x-request-id", "acme-*"])
    assert rule.passes("x-request-id") and rule.passes("acme-tenant")
    assert not rule.passes("x-request-idx") and not rule.passes("other")
    everything = PassRule(["*"])
    assert everything.passes("anything")
    assert not everything.passes(HEADER_FORMAT) and not everything.passes(HEADER_MODEL_VERSION)
    assert not PassRule([])


def test_what_a_message_hands_on() -> None:
    rule = PassRule(["x-request-id", "acme-*"])
    hand_on = carried(
        [
            ("traceparent", VALID.encode()),
            ("tracestate", b"congo=t61rcWkgMzE"),
            ("x-request-id", b"req-1"),
            ("acme-tenant", b"blue\nFORGED"),
            ("dropped", b"x"),
            (HEADER_FORMAT, b"u8"),
        ],
        rule,
    )
    assert hand_on is not None
    headers = dict(hand_on.headers())
    assert headers["tracestate"] == b"congo=t61rcWkgMzE"
    assert headers["x-request-id"] == b"req-1"
    assert headers["acme-tenant"] == b"blue\\nFORGED"  # escaped: one line
    assert "dropped" not in headers and HEADER_FORMAT not in headers
    child = parse_traceparent(headers["traceparent"])
    assert child is not None and child.trace_id == TRACE and child.span_id != SPAN


def test_passed_values_are_capped_and_so_is_their_number() -> None:
    rule = PassRule(["h-*"])
    many = [(f"h-{i}", b"v" * 5000) for i in range(MAX_PASSED + 5)]
    hand_on = carried(many, rule)
    assert hand_on is not None
    assert len(hand_on.passed) == MAX_PASSED
    value = hand_on.passed[0][1]
    assert isinstance(value, bytes)
    shown, cut = value.decode().split("\u2026")
    assert shown == "v" * PASSED_VALUE_LIMIT and cut.startswith("(+")


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", b"00-not-valid")],
        [("traceparent", VALID.encode()), ("traceparent", VALID.encode())],  # two: ambiguous
        [("traceparent", f"00-{'0' * 32}-{SPAN}-01".encode()), ("tracestate", b"a=b")],
        [("x-other", b"1")],
        [("traceparent", None)],
    ],
)
def test_a_message_with_nothing_valid_to_hand_on_hands_nothing_on(
    headers: list[tuple[str, bytes | None]],
) -> None:
    assert carried(headers, PassRule([])) is None


def test_a_batch_without_headers_to_hand_on_costs_no_list() -> None:
    messages = [kafka_message(b"{}", i, headers=[(HEADER_FORMAT, b"u8")]) for i in range(3)]
    assert carry(messages, PassRule([])) is None
    traced = [*messages, kafka_message(b"{}", 3, headers=[("traceparent", VALID.encode())])]
    found = carry(traced, PassRule([]))
    assert found is not None and found[:3] == [None, None, None]
    assert isinstance(found[3], Carried)


def test_a_dead_letter_continues_the_trace_and_drops_a_malformed_one() -> None:
    kept = continued([(HEADER_FORMAT, b"u8"), ("traceparent", VALID.encode()), ("x", b"1")])
    names = [k for k, _ in kept]
    assert names == [HEADER_FORMAT, "x", "traceparent"]
    child = parse_traceparent(dict(kept)["traceparent"])
    assert child is not None and child.trace_id == TRACE and child.span_id != SPAN
    bad = continued([("traceparent", b"00-bad"), ("tracestate", b"a=b"), ("x", b"1")])
    assert bad == [("x", b"1")]


@pytest.fixture(scope="module")
def model(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


def test_each_output_knows_its_input_in_every_mode(model: Model) -> None:
    images = read_images(SEED_TEST).pixels
    messages = [kafka_message(image_json(px, id=f"i{n}"), n) for n, px in enumerate(images)]
    messages.insert(2, kafka_message(b"not json", 99))
    result = BatchScorer(model).process(messages)
    assert len(result.scores) == result.scored and result.flagged > 0
    ids = {n: f"i{n - (n > 2)}".encode() for n in range(len(messages)) if n != 2}
    assert [ids[p] for p in result.scores_from()] == [k for k, _ in result.scores]
    assert [ids[p] for p in result.anomalies_from()] == [k for k, _ in result.anomalies]

    flagged = result.anomalies_from()
    result.drop_outputs_of({flagged[0]})
    assert flagged[0] not in result.scores_from() and flagged[0] not in result.anomalies_from()
    assert [ids[p] for p in result.scores_from()] == [k for k, _ in result.scores]
    assert [ids[p] for p in result.anomalies_from()] == [k for k, _ in result.anomalies]


def test_grouped_scores_know_their_messages(model: Model) -> None:
    images = read_images(SEED_TEST).pixels
    grouped = orjson.dumps({"images": [{"pixels": px.tolist()} for px in images[:3]]})
    messages = [
        kafka_message(image_json(images[0]), 0),
        kafka_message(grouped, 1),
        kafka_message(image_json(images[1]), 2),
    ]
    result = BatchScorer(model, scores_grouping="message").process(messages)
    assert result.scores_from() == [0, 1, 2]
    assert len(result.scores) == 3


def test_our_headers_come_first_on_every_dead_letter(model: Model) -> None:
    message = kafka_message(
        b"not json", 4, headers=[("traceparent", VALID.encode()), (HEADER_REASON, b"forged")]
    )
    [dead] = BatchScorer(model).process([message]).dead
    headers = dead.headers("now")
    assert [v for k, v in headers if k == HEADER_REASON] == [b"invalid_json"]
    child = parse_traceparent(dict(headers)["traceparent"])
    assert child is not None and child.trace_id == TRACE


def test_pass_headers_setting_is_checked_at_start_up() -> None:
    assert Settings(pass_headers="x-request-id, acme-*").pass_header_names == [
        "x-request-id",
        "acme-*",
    ]
    for bad in ("pixelwatch.format", "traceparent", "has space", "x" * 101):
        with pytest.raises(ValueError, match="pass_headers"):
            Settings(pass_headers=bad)


def test_tracing_is_off_unless_an_otlp_endpoint_is_set() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert not tracing_enabled({})
    assert tracing_enabled(endpoint)
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h:4318/v1/traces"})
    assert not tracing_enabled(endpoint | {"OTEL_SDK_DISABLED": "true"})
    assert not tracing_enabled(endpoint | {"OTEL_TRACES_EXPORTER": "none"})
    assert tracing_enabled(endpoint | {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ],
)
def test_an_unsupported_exporter_is_one_line_at_start_up(extra: dict[str, str], named: str) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"} | extra
    with pytest.raises(PixelwatchError, match=named) as caught:
        tracing_enabled(environ)
    assert "\n" not in str(caught.value)
