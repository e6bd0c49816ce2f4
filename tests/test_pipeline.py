"""The worker's batch logic on real models, without Kafka: verdicts, outputs, dead letters."""

from pathlib import Path

import numpy as np
import orjson
import pytest

from service.dataplane.pipeline import BatchScorer, Record
from service.samples import SEED_TEST, SEED_TRAIN
from service.schemas import HEADER_OFFSET, HEADER_REASON, DeadLetterReason, ScoreMessage
from service.scoring.images import read_images
from service.scoring.model import Model, load_model


@pytest.fixture(scope="module")
def model(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


def record(value: bytes | None, offset: int = 0, key: bytes | None = None) -> Record:
    return Record(key, value, "images", 3, offset, timestamp_ms=1_700_000_000_000 + offset)


def message(pixels: object, **extra: object) -> bytes:
    return orjson.dumps({"pixels": pixels, **extra}, option=orjson.OPT_SERIALIZE_NUMPY)


def test_verdicts_match_the_model_and_outputs_follow_the_schema(model: Model) -> None:
    images = np.concatenate([read_images(SEED_TEST).pixels, read_images(SEED_TRAIN).pixels])
    records = [record(message(px, id=f"img-{i}", ts=42 + i), i) for i, px in enumerate(images)]
    result = BatchScorer(model).process(records)

    expected = model.score(images)
    assert result.dead == []
    assert [o.anomaly for o in result.outputs] == expected.anomaly.tolist()
    assert any(o.anomaly for o in result.outputs) and not all(o.anomaly for o in result.outputs)
    for i, out in enumerate(result.outputs):
        parsed = ScoreMessage.model_validate_json(out.value)
        assert out.key == f"img-{i}".encode() and parsed.id == f"img-{i}"
        assert parsed.ts == 42 + i
        assert parsed.similarity == pytest.approx(float(expected.similarity[i]))
        assert parsed.pixels == pytest.approx(images[i].tolist())
        assert parsed.reconstruction == pytest.approx(expected.reconstruction[i].tolist())
        assert parsed.source.offset == i and parsed.source.partition == 3
        assert parsed.model.sha256 == model.sha256


def test_id_and_time_default_to_kafka_coordinates(model: Model) -> None:
    art = "".join(read_images(SEED_TRAIN).pixels[0].astype(int).astype(str)).translate(
        str.maketrans("10", "X.")
    )
    result = BatchScorer(model).process([record(message(art), offset=17)])
    parsed = ScoreMessage.model_validate_json(result.outputs[0].value)
    assert parsed.id == "images:3:17"
    assert parsed.ts == 1_700_000_000_017


def test_threshold_and_metric_overrides_change_the_verdict(model: Model) -> None:
    records = [record(message(read_images(SEED_TEST).pixels[0]))]
    strict = BatchScorer(model, threshold=1.0).process(records).outputs[0]
    lenient = BatchScorer(model, threshold=0.0, metric="ruzicka").process(records).outputs[0]
    assert strict.anomaly and not lenient.anomaly
    assert orjson.loads(lenient.value)["metric"] == "ruzicka"


BAD_INPUTS = [
    (b"x" * 70_000, DeadLetterReason.OVERSIZED, "70000 bytes is over the 65536-byte limit"),
    (None, DeadLetterReason.INVALID_JSON, "empty message value"),
    (b"{not json", DeadLetterReason.INVALID_JSON, "invalid JSON"),
    (b"[1, 2]", DeadLetterReason.SCHEMA, "value must be a JSON object"),
    (b'{"pixels": 5}', DeadLetterReason.SCHEMA, "pixels: Input should be a valid"),
    (b'{"pixels": ["0.5"]}', DeadLetterReason.SCHEMA, "pixels.0: Input should be a valid number"),
    (b'{"image": []}', DeadLetterReason.SCHEMA, "pixels: Field required"),
    (b'{"pixels": [0, 1], "id": 7}', DeadLetterReason.SCHEMA, "id: Input should be a valid string"),
    (b'{"pixels": [0, 1]}', DeadLetterReason.PIXEL_COUNT, "pixels: 2 values, expected 64 (8x8)"),
    (b'{"pixels": "X."}', DeadLetterReason.PIXEL_COUNT, "pixels: 2 pixels, expected 64 (8x8)"),
    (b'{"pixels": "' + b"o" * 64 + b'"}', DeadLetterReason.PIXEL_VALUE, "unknown pixel character"),
    (
        message([0.0] * 63 + [1.5]),
        DeadLetterReason.PIXEL_VALUE,
        "pixels[63]: 1.5 is outside [0, 1]",
    ),
    (b'{"pixels": [NaN' + b", 0" * 63 + b"]}", DeadLetterReason.PIXEL_VALUE, "pixels[0]: nan"),
]


@pytest.mark.parametrize(("value", "reason", "text"), BAD_INPUTS)
def test_bad_input_becomes_a_dead_letter_with_its_reason(
    model: Model, value: bytes | None, reason: DeadLetterReason, text: str
) -> None:
    good = record(message([0.0] * 64), offset=1)
    result = BatchScorer(model).process([record(value, offset=9, key=b"k"), good])
    assert len(result.outputs) == 1  # the good one is still scored
    [dead] = result.dead
    assert dead.reason is reason
    assert text in dead.message
    assert dead.record.value == value and dead.record.key == b"k"  # original bytes kept
    headers = dict(dead.headers(result.detected_at))
    assert headers[HEADER_REASON] == reason.value.encode()
    assert headers[HEADER_OFFSET] == b"9"


def test_a_batch_is_scored_with_one_model_call(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = model.score

    def counting(pixels: np.ndarray, **kwargs: object) -> object:
        calls.append(len(pixels))
        return original(pixels, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "score", counting)
    records = [record(message(np.zeros(64)), i) for i in range(50)] + [record(b"bad", 50)]
    result = BatchScorer(model).process(records)
    assert calls == [50]
    assert len(result.outputs) == 50 and len(result.dead) == 1
