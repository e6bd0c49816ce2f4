"""The data path's batch logic on real models, without a broker: verdicts, output records in
both formats, every kind of input message, and dead letters with their exact reasons."""

from pathlib import Path

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from kafka_messages import bits_bytes, image_json, kafka_message, u8_bytes
from service.config import Settings
from service.dataplane.pipeline import BatchResult, BatchScorer
from service.samples import SEED_TEST, SEED_TRAIN
from service.schemas import (
    HEADER_FORMAT,
    HEADER_ID,
    HEADER_INDEX,
    HEADER_MESSAGE,
    HEADER_OFFSET,
    HEADER_REASON,
    DeadLetterReason,
    FullScoreMessage,
    MessageScores,
    ScoreMessage,
)
from service.scoring.images import read_images
from service.scoring.model import Model, load_model

Reason = DeadLetterReason


@pytest.fixture(scope="module")
def model(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.concatenate([read_images(SEED_TEST).pixels, read_images(SEED_TRAIN).pixels])


def test_verdicts_match_the_model_and_records_follow_their_schemas(
    model: Model, images: np.ndarray
) -> None:
    messages = [
        kafka_message(image_json(px, id=f"img-{i}", ts=42 + i), i) for i, px in enumerate(images)
    ]
    result = BatchScorer(model).process(messages)

    expected = model.score(images)
    assert result.dead == []
    assert result.scored == len(images)
    compact = [ScoreMessage.model_validate_json(value) for _, value in result.scores]
    assert [s.anomaly for s in compact] == expected.anomaly.tolist()
    assert 0 < result.flagged < len(images)
    for i, score in enumerate(compact):
        assert result.scores[i][0] == f"img-{i}".encode() and score.id == f"img-{i}"
        assert score.ts == 42 + i
        assert score.similarity == pytest.approx(float(expected.similarity[i]))
        assert (
            score.source.offset == i and score.source.partition == 3 and score.source.index is None
        )
        assert score.model.sha256 == model.sha256 and score.model.version == model.version
    flagged = [i for i, a in enumerate(expected.anomaly.tolist()) if a]
    full = [FullScoreMessage.model_validate_json(value) for _, value in result.anomalies]
    assert [f.id for f in full] == [f"img-{i}" for i in flagged]
    for i, record in zip(flagged, full, strict=True):
        assert record.pixels == pytest.approx(images[i].tolist())
        assert record.reconstruction == pytest.approx(expected.reconstruction[i].tolist())
        assert record.metric == "hamming" and record.threshold == pytest.approx(0.6)
    assert dict(result.headers) == {
        "pixelwatch.model.version": model.version.encode(),
        "pixelwatch.model.sha256": model.sha256.encode(),
    }


def test_record_formats_are_chosen_per_topic(model: Model, images: np.ndarray) -> None:
    messages = [kafka_message(image_json(px), i) for i, px in enumerate(images)]

    swapped = BatchScorer(model, scores_format="full", anomalies_format="compact").process(messages)
    assert all(FullScoreMessage.model_validate_json(v) for _, v in swapped.scores)
    assert all(ScoreMessage.model_validate_json(v) for _, v in swapped.anomalies)

    quiet = BatchScorer(model, scores_format=None).process(messages)
    assert quiet.scores == [] and len(quiet.anomalies) == quiet.flagged > 0


def test_id_and_time_default_to_kafka_coordinates(model: Model) -> None:
    art = "".join(read_images(SEED_TRAIN).pixels[0].astype(int).astype(str)).translate(
        str.maketrans("10", "X.")
    )
    result = BatchScorer(model).process([kafka_message(image_json(art), offset=17)])
    parsed = ScoreMessage.model_validate_json(result.scores[0][1])
    assert parsed.id == "images:3:17"
    assert parsed.ts == 1_700_000_000_017


def test_threshold_and_metric_overrides_change_the_verdict(model: Model) -> None:
    messages = [kafka_message(image_json(read_images(SEED_TEST).pixels[0]))]
    strict = BatchScorer(model, threshold=1.0).process(messages)
    lenient = BatchScorer(model, threshold=0.0, metric="ruzicka").process(messages)
    assert strict.flagged == 1 and lenient.flagged == 0
    assert BatchScorer(model, metric="ruzicka", threshold=1.0).process(messages).flagged == 1
    full = orjson.loads(
        BatchScorer(model, metric="ruzicka", threshold=1.0).process(messages).anomalies[0][1]
    )
    assert full["metric"] == "ruzicka" and full["threshold"] == 1.0


BAD_INPUTS = [
    (b"x" * 70_000, Reason.OVERSIZED, "70000 bytes is over the 65536-byte limit"),
    (None, Reason.INVALID_JSON, "empty message value"),
    (b"{not json", Reason.INVALID_JSON, "invalid JSON"),
    (b"[1, 2]", Reason.SCHEMA, "value must be a JSON object"),
    (b'{"pixels": 5}', Reason.SCHEMA, "pixels: Input should be a valid"),
    (b'{"pixels": ["0.5"]}', Reason.SCHEMA, "pixels.0: Input should be a valid number"),
    (
        b'{"pixels": [' + b"0, " * 63 + b'"1"]}',
        Reason.SCHEMA,
        "pixels.63: Input should be a valid number",
    ),
    (
        b'{"pixels": [' + b"0, " * 63 + b"true]}",
        Reason.SCHEMA,
        "pixels.63: Input should be a valid number",
    ),
    (b'{"image": []}', Reason.SCHEMA, "pixels: Field required"),
    (b'{"pixels": [0, 1], "id": 7}', Reason.SCHEMA, "id: Input should be a valid string"),
    (image_json([0] * 64, id=""), Reason.SCHEMA, "id: String should have at least 1 character"),
    (image_json([0] * 64, ts=-1), Reason.SCHEMA, "ts: Input should be greater than or equal to 0"),
    # ts beyond int64: once a crash of the output encoder, now refused by the schema.
    (b'{"pixels": [' + b"0," * 63 + b'0], "ts": 1e30}', Reason.SCHEMA, "ts: "),
    (image_json([0] * 64, ts=2**63), Reason.SCHEMA, "ts: Input should be less than or equal to"),
    (b'{"pixels": [' + b"0," * 63 + b'0], "ts": 100000000000000000000}', Reason.SCHEMA, "ts: "),
    (b'{"pixels": [0, 1]}', Reason.PIXEL_COUNT, "pixels: 2 values, expected 64 (8x8)"),
    (b'{"pixels": "X."}', Reason.PIXEL_COUNT, "pixels: 2 pixels, expected 64 (8x8)"),
    (b'{"pixels": "' + b"o" * 64 + b'"}', Reason.PIXEL_VALUE, "pixels: unknown pixel character"),
    (image_json([0.0] * 63 + [1.5]), Reason.PIXEL_VALUE, "pixels[63]: 1.5 is outside [0, 1]"),
    (b'{"pixels": [NaN' + b", 0" * 63 + b"]}", Reason.PIXEL_VALUE, "pixels[0]: nan"),
    (b'{"pixels": [1e39' + b", 0" * 63 + b"]}", Reason.PIXEL_VALUE, "pixels[0]: inf"),
]


@pytest.mark.parametrize(("value", "reason", "text"), BAD_INPUTS)
def test_bad_input_becomes_a_dead_letter_with_its_reason(
    model: Model, value: bytes | None, reason: DeadLetterReason, text: str
) -> None:
    good = kafka_message(image_json([0.0] * 64), offset=1)
    result = BatchScorer(model).process([kafka_message(value, offset=9, key=b"k"), good])
    assert result.scored == 1  # the good one is still scored
    [dead] = result.dead
    assert (dead.reason, dead.text[: len(text)]) == (reason, text)
    assert dead.payload() == value and dead.message.key() == b"k"  # original bytes kept
    headers = dict(dead.headers(result.detected_at))
    assert headers[HEADER_REASON] == reason.value.encode()
    assert headers[HEADER_OFFSET] == b"9"
    assert HEADER_INDEX not in headers


def test_untrusted_field_names_reach_dead_letter_texts_escaped_and_capped(model: Model) -> None:
    forged = b'{"pixels": [0], "x\\nFAKE ERROR worker crashed": 1}'
    huge = b'{"pixels": [0], "' + b"k" * 60_000 + b'": 1}'
    result = BatchScorer(model).process([kafka_message(forged), kafka_message(huge, 1)])
    texts = [d.text for d in result.dead]
    assert "\n" not in texts[0] and "x\\nFAKE ERROR" in texts[0]
    assert len(texts[1]) < 300 and "chars)" in texts[1]


def test_a_batch_is_scored_with_one_model_call(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = model.score

    def counting(pixels: np.ndarray, **kwargs: object) -> object:
        calls.append(len(pixels))
        return original(pixels, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "score", counting)
    messages = [kafka_message(image_json(np.zeros(64)), i) for i in range(50)]
    result = BatchScorer(model).process([*messages, kafka_message(b"bad", 50)])
    assert calls == [50]
    assert result.scored == 50 and len(result.dead) == 1


def test_an_exception_on_one_message_dead_letters_it_and_spares_the_rest(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = model.score

    def fragile(pixels: np.ndarray, **kwargs: object) -> object:
        if (np.asarray(pixels) == 0.25).any():
            raise FloatingPointError("the poison pixel")
        return original(pixels, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "score", fragile)
    poison = image_json([0.25] * 64)
    messages = [kafka_message(image_json(np.zeros(64)), i) for i in range(5)]
    messages.insert(2, kafka_message(poison, 99))
    result = BatchScorer(model).process(messages)
    assert result.scored == 5
    [dead] = result.dead
    assert dead.reason is Reason.INTERNAL and dead.message.offset() == 99
    assert dead.text == "FloatingPointError: the poison pixel"
    assert dead.payload() == poison


# ---- binary and batched messages ----


def test_binary_u8_and_bits_images_score_like_their_json(model: Model, images: np.ndarray) -> None:
    as_json = BatchScorer(model).process(
        [kafka_message(image_json(px), i) for i, px in enumerate(images)]
    )
    binary = [
        kafka_message(u8_bytes(images), 0, headers=[(HEADER_FORMAT, b"u8"), (HEADER_ID, b"cam")]),
        kafka_message(bits_bytes(images), 1, headers=[(HEADER_FORMAT, b"bits")]),
    ]
    result = BatchScorer(model).process(binary)
    assert result.dead == []
    scores = [ScoreMessage.model_validate_json(v) for _, v in result.scores]
    n = len(images)
    assert [s.id for s in scores] == [f"cam:{k}" for k in range(n)] + [
        f"images:3:1:{k}" for k in range(n)
    ]
    assert [s.source.index for s in scores] == list(range(n)) * 2
    expected = [ScoreMessage.model_validate_json(v).similarity for _, v in as_json.scores]
    assert [s.similarity for s in scores] == pytest.approx(expected * 2)
    assert [s.ts for s in scores] == [1_700_000_000_000] * n + [1_700_000_000_001] * n


def test_a_single_binary_image_keeps_the_plain_id(model: Model, images: np.ndarray) -> None:
    one = kafka_message(
        bits_bytes(images[:1]), 5, headers=[(HEADER_FORMAT, b"bits"), (HEADER_ID, b"frame-9")]
    )
    [(key, value)] = BatchScorer(model).process([one]).scores
    assert key == b"frame-9" and ScoreMessage.model_validate_json(value).source.index is None


@pytest.mark.parametrize(
    ("value", "headers", "reason", "text"),
    [
        (b"\x00" * 63, [(HEADER_FORMAT, b"u8")], Reason.PIXEL_COUNT,
         "63 bytes is not a whole number of u8 images of 64 bytes (8x8)"),
        (b"\x00" * 12, [(HEADER_FORMAT, b"bits")], Reason.PIXEL_COUNT,
         "12 bytes is not a whole number of bits images of 8 bytes (8x8)"),
        (b"\x00" * 64, [(HEADER_FORMAT, b"png\n")], Reason.SCHEMA,
         "pixelwatch.format 'png\\\\n' is not a format (use u8 or bits)"),
        (b"\x00" * 64, [(HEADER_FORMAT, b"u8"), (HEADER_ID, b"")], Reason.SCHEMA,
         "pixelwatch.id: must be 1 to 256 characters"),
    ],
)  # fmt: skip
def test_malformed_binary_messages_are_dead_lettered_whole(
    model: Model,
    value: bytes,
    headers: list[tuple[str, bytes]],
    reason: DeadLetterReason,
    text: str,
) -> None:
    result = BatchScorer(model).process([kafka_message(value, 4, headers=headers)])
    [dead] = result.dead
    assert (dead.reason, dead.text, dead.payload()) == (reason, text, value)
    # The input's own headers travel along, so the dead letter can be replayed as it was.
    assert dead.headers("now")[: len(headers)] == headers


def test_a_json_batch_answers_and_dead_letters_image_by_image(
    model: Model, images: np.ndarray
) -> None:
    good = [{"id": f"b{k}", "pixels": images[k].tolist()} for k in range(3)]
    bad = {"id": "b3", "pixels": [0.0] * 63 + [2.0]}
    wrong = {"pixels": [0, 1]}
    value = orjson.dumps(
        {"images": [good[0], bad, good[1], wrong, good[2], {"pixels": images[0].tolist()}]}
    )
    result = BatchScorer(model).process([kafka_message(value, 7)])
    scores = [ScoreMessage.model_validate_json(v) for _, v in result.scores]
    assert [s.id for s in scores] == ["b0", "b1", "b2", "images:3:7:5"]
    assert [s.source.index for s in scores] == [0, 2, 4, 5]
    dead = {d.index: d for d in result.dead}
    assert sorted(dead) == [1, 3]
    assert (dead[1].reason, dead[1].text) == (
        Reason.PIXEL_VALUE,
        "pixels[63]: 2.0 is outside [0, 1]",
    )
    assert (dead[3].reason, dead[3].text) == (
        Reason.PIXEL_COUNT,
        "pixels: 2 values, expected 64 (8x8)",
    )
    # Each bad image is dead-lettered alone, as a single-image message that can be replayed.
    assert orjson.loads(dead[1].payload() or b"") == bad
    assert orjson.loads(dead[3].payload() or b"") == wrong
    headers = dict(dead[1].headers("now"))
    assert headers[HEADER_INDEX] == b"1" and headers[HEADER_OFFSET] == b"7"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (b'{"images": []}', "images: List should have at least 1 item after validation, not 0"),
        (b'{"images": 3}', "images: Input should be a valid list"),
        (b'{"images": [], "extra": 1}', "images: List should have at least 1 item"),
    ],
)
def test_a_malformed_json_batch_is_dead_lettered_whole(
    model: Model, value: bytes, text: str
) -> None:
    [dead] = BatchScorer(model).process([kafka_message(value)]).dead
    assert dead.reason is Reason.SCHEMA and dead.text.startswith(text) and dead.index == -1
    assert dead.payload() == value


def test_dead_letter_headers_of_a_replayed_message_are_not_duplicated(model: Model) -> None:
    replayed = kafka_message(
        b"{broken", 3,
        headers=[("trace", b"t-1"), (HEADER_REASON, b"schema"), (HEADER_MESSAGE, b"old")],
    )  # fmt: skip
    [dead] = BatchScorer(model).process([replayed]).dead
    headers = dead.headers("now")
    assert [k for k, _ in headers].count(HEADER_REASON) == 1
    assert dict(headers)[HEADER_REASON] == b"invalid_json" and ("trace", b"t-1") in headers


@pytest.mark.parametrize(("fmt", "per_message"), [("json", 1), ("json", 3), ("u8", 3), ("bits", 3)])
def test_what_produce_writes_the_worker_reads_image_for_image(
    model: Model, images: np.ndarray, fmt: str, per_message: int
) -> None:
    from service.cli.produce import encode_messages

    ids = [f"p-{i}" for i in range(len(images))]
    messages = []
    for offset, first in enumerate(range(0, len(images), per_message)):
        key, value, headers = encode_messages(
            images[first : first + per_message], ids[first : first + per_message], 7, fmt
        )
        messages.append(kafka_message(value, offset, key=key, headers=headers))
    result = BatchScorer(model).process(messages)
    assert result.dead == []
    scores = [ScoreMessage.model_validate_json(v) for _, v in result.scores]
    expected = model.score(images).similarity.tolist()
    assert [s.similarity for s in scores] == pytest.approx(expected)
    if fmt == "json":
        assert [s.id for s in scores] == ids and {s.ts for s in scores} == {7}
    else:  # binary: named after each message's first image, then the index
        assert [s.id for s in scores][:per_message] == [f"p-0:{k}" for k in range(per_message)]


def test_grouped_scores_give_one_record_per_multi_image_message_with_every_verdict_in_order(
    model: Model, images: np.ndarray
) -> None:
    good = [{"id": f"b{k}", "pixels": images[k].tolist()} for k in range(3)]
    bad = {"id": "b3", "pixels": [0.0] * 63 + [2.0]}
    wrong = {"pixels": [0, 1]}
    batch = orjson.dumps({"images": [good[0], bad, good[1], wrong, good[2]]})
    messages = [
        kafka_message(batch, 7, key=b"line-4"),
        kafka_message(image_json(images[3], id="alone"), 8),
        kafka_message(bits_bytes(images), 9, headers=[(HEADER_FORMAT, b"bits")]),
        # Every image of it is bad: its record lists them all as dead.
        kafka_message(orjson.dumps({"images": [wrong, bad]}), 10),
    ]
    per_image = BatchScorer(model).process(messages)
    grouped = BatchScorer(model, scores_grouping="message").process(messages)

    # Anomalies and dead letters stay per image; only the scores topic is grouped.
    def flagged(result: BatchResult) -> list[tuple[bytes, dict[str, object]]]:
        return [(k, {**orjson.loads(v), "detected_at": ""}) for k, v in result.anomalies]

    assert flagged(grouped) == flagged(per_image) and grouped.anomalies
    assert [(d.index, d.reason) for d in grouped.dead] == [
        (d.index, d.reason) for d in per_image.dead
    ]
    keys = [k for k, _ in grouped.scores]
    assert keys == [b"line-4", b"alone", b"images:3:9", b"images:3:10"]
    first, alone, bits, all_dead = (v for _, v in grouped.scores)
    assert ScoreMessage.model_validate_json(alone).id == "alone"  # a single image: as before
    records = [MessageScores.model_validate_json(v) for v in (first, bits, all_dead)]
    assert [(r.source.offset, r.source.index) for r in records] == [
        (7, None),
        (9, None),
        (10, None),
    ]
    assert [v.index for v in records[0].images] == [0, 2, 4]
    assert [(d.index, d.reason) for d in records[0].dead] == [
        (1, Reason.PIXEL_VALUE),
        (3, Reason.PIXEL_COUNT),
    ]
    assert [v.index for v in records[1].images] == list(range(len(images)))
    assert (records[2].images, [d.index for d in records[2].dead]) == ([], [0, 1])
    # Every verdict is the per-image record's, field for field.
    singles = {s.id: s for s in (ScoreMessage.model_validate_json(v) for _, v in per_image.scores)}
    for record in records:
        assert record.model == singles["alone"].model
        for verdict in record.images:
            single = singles[verdict.id]
            assert (verdict.anomaly, verdict.similarity, verdict.scores, verdict.ts) == (
                single.anomaly,
                single.similarity,
                single.scores,
                single.ts,
            )
            assert single.source.index == verdict.index


def test_grouped_scores_need_compact_records() -> None:
    with pytest.raises(ValidationError, match="PIXELWATCH_SCORES_FORMAT=compact"):
        Settings(scores_grouping="message", scores_format="full")
