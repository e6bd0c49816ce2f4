"""The decoder's fast path changes speed, never verdicts: for any image message, what it
decides (scored, with which pixels, id and time; or dead-lettered, with which reason and
text) is what pydantic alone decides."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kafka_messages import kafka_message
from service.dataplane.decode import Rejected, out_of_range, parse_image, value_problem
from service.dataplane.pipeline import BatchScorer
from service.scoring.images import ImageShape
from service.scoring.model import Model, load_model

SHAPE = ImageShape(8, 8)

pixel = st.one_of(
    st.sampled_from([0, 1, 0.0, 1.0, 0.5, -0.0, 2, -1, 1e39, -1e-9, 1.0000001]),
    st.floats(min_value=-0.5, max_value=1.5, allow_nan=False),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.sampled_from(["0.5", "1", None, [0], {"a": 1}]),
)
clean_row = st.lists(st.sampled_from([0.0, 1.0, 0.25, 0, 1]), min_size=64, max_size=64)
# Mostly well-formed rows, so that the fast path is exercised as much as the slow one; one odd
# value in an otherwise clean row is the case the fast path must catch.
row = st.one_of(
    clean_row,
    st.builds(
        lambda base, i, odd: [*base[:i], odd, *base[i + 1 :]], clean_row, st.integers(0, 63), pixel
    ),
    st.lists(pixel, min_size=64, max_size=64),
    st.lists(st.sampled_from([0.0, 1.0]), min_size=62, max_size=66),
    st.text(alphabet="X. o", min_size=60, max_size=66),
)
ident = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.text(min_size=255, max_size=258),
    st.integers(),
    st.just("true"),
)
ts = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=5),
    st.sampled_from([2**63 - 1, 2**63, 2**64, 2**70, 1.5, 1e30, "5", True, False]),
)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    doc: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        doc["pixels"] = draw(row)
    if draw(st.booleans()):
        doc["id"] = draw(ident)
    if draw(st.booleans()):
        doc["ts"] = draw(ts)
    if not draw(st.integers(0, 9)):
        doc[draw(st.text(max_size=8))] = 1
    return doc if draw(st.integers(0, 19)) else draw(st.sampled_from([[doc], 3, "x", None]))


def reference(raw: bytes, offset: int) -> tuple[Any, ...]:
    """pydantic alone, then the range check: the behaviour before the fast path existed."""
    try:
        message, pixels = parse_image(raw, SHAPE)
    except Rejected as exc:
        return ("dead", exc.reason.value, str(exc))
    if out_of_range(pixels[None])[0]:
        return ("dead", "pixel_value", value_problem(pixels))
    return ("scored", message.id or f"images:3:{offset}", message.ts, pixels.tolist())


@pytest.fixture(scope="module")
def model(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(documents(), min_size=1, max_size=8))
def test_fast_and_slow_paths_decide_alike(model: Model, docs: list[Any]) -> None:
    # The stdlib writes what orjson cannot (NaN, Infinity, integers beyond 64 bits).
    raws = [json.dumps(doc).encode() for doc in docs]
    result = BatchScorer(model, scores_format="full").process(
        [kafka_message(raw, offset) for offset, raw in enumerate(raws)]
    )
    got: dict[int, tuple[Any, ...]] = {}
    for dead in result.dead:
        got[int(dead.message.offset() or 0)] = ("dead", dead.reason.value, dead.text)
    for _, value in result.scores:
        out = json.loads(value)
        offset = out["source"]["offset"]
        ts = out["ts"] if out["ts"] != 1_700_000_000_000 + offset else None
        got[offset] = ("scored", out["id"], ts, out["pixels"])
    expected = {offset: reference(raw, offset) for offset, raw in enumerate(raws)}
    # A message with no ts takes the Kafka timestamp; compare that case as None.
    for offset, outcome in expected.items():
        if outcome[0] == "scored" and outcome[2] == 1_700_000_000_000 + offset:
            expected[offset] = (*outcome[:2], None, outcome[3])
    assert got.keys() == expected.keys()
    for offset in expected:
        if expected[offset][0] == "scored":
            assert got[offset][:3] == expected[offset][:3]
            # The record writes each float32 in its shortest form, which reads back as the
            # same float32 (not as the same float64: for a subnormal such as 1.4e-45 the two
            # differ by 28%), so the pixels are compared exactly, as float32.
            np.testing.assert_array_equal(
                np.asarray(got[offset][3], np.float32), np.asarray(expected[offset][3], np.float32)
            )
        else:
            assert got[offset] == expected[offset], raws[offset][:200]
