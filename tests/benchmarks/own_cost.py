"""The data path's own cost per message, in-process: decode, validate, score and encode
(`BatchScorer.process`), without Kafka. The baseline, measured in the same run on the same
messages, is the least any JSON worker does: `orjson.loads` of the input and `orjson.dumps`
of a compact record.

    python tests/benchmarks/own_cost.py MODEL.onnx

`cost_by_size` splits the cost per image of single-image binary `u8` messages into the data
path's stages, for models of several image sizes: which stage dominates changes with the size.
"""

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message, Producer
from numpy.typing import NDArray

from service.cli.produce import encode, encode_messages
from service.dataplane.pipeline import BatchScorer
from service.samples import SEED_TRAIN
from service.scoring.images import read_images
from service.scoring.model import Model, load_model


def _messages(values: list[tuple[bytes, bytes, Any]]) -> list[Message]:
    return [
        Message(
            topic="images", partition=i % 4, offset=i, key=k, value=v, headers=h,
            timestamp=(TIMESTAMP_CREATE_TIME, 1_764_169_200_000),
        )
        for i, (k, v, h) in enumerate(values)
    ]  # fmt: skip


def _best(run: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of `repeats` runs (the least disturbed by the rest of the host)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def own_cost(
    model: Model, batch: int = 500, per_message: int = 50, repeats: int = 30
) -> dict[str, float]:
    """Microseconds per message (per image for batched messages), best of `repeats`."""
    rng = np.random.default_rng(0)
    normal = read_images(SEED_TRAIN, model.shape).pixels
    images = normal[rng.integers(0, len(normal), batch)]
    ids = [f"img-{i}" for i in range(batch)]
    now = 1_764_169_200_000
    json_single = _messages(
        [(i.encode(), encode(px, i, now), None) for i, px in zip(ids, images, strict=True)]
    )
    groups = range(0, batch, per_message)
    json_batch = _messages(
        [
            encode_messages(images[g : g + per_message], ids[g : g + per_message], now)
            for g in groups
        ]
    )
    u8 = _messages(
        [
            encode_messages(images[g : g + per_message], ids[g : g + per_message], now, "u8")
            for g in groups
        ]
    )
    bits = _messages(
        [
            encode_messages(images[g : g + per_message], ids[g : g + per_message], now, "bits")
            for g in groups
        ]
    )
    scorer = BatchScorer(model)
    grouped = BatchScorer(model, scores_grouping="message")
    record = {"id": "img-0", "anomaly": False, "similarity": 0.984375,
              "scores": {"hamming": 0.98, "ruzicka": 0.9, "dice": 0.95, "cosine": 0.94},
              "model": {"version": model.version, "sha256": model.sha256},
              "source": {"topic": "images", "partition": 0, "offset": 0}, "ts": now}  # fmt: skip

    def baseline() -> None:
        for m in json_single:
            orjson.loads(m.value() or b"")
            orjson.dumps(record)

    per = 1e6 / batch
    return {
        "batch": float(batch),
        "images_per_message": float(per_message),
        "json_us": _best(lambda: scorer.process(json_single), repeats) * per,
        "json_batch_us": _best(lambda: scorer.process(json_batch), repeats) * per,
        "u8_us": _best(lambda: scorer.process(u8), repeats) * per,
        "bits_us": _best(lambda: scorer.process(bits), repeats) * per,
        # One scores record per message (PIXELWATCH_SCORES_GROUPING=message).
        "bits_grouped_us": _best(lambda: grouped.process(bits), repeats) * per,
        "baseline_us": _best(baseline, repeats) * per,
    }


STAGES = ("decode", "onnx", "encode", "produce")


def cost_by_size(
    models: dict[str, tuple[Model, NDArray[np.float32]]], batch: int = 500, repeats: int = 15
) -> list[dict[str, Any]]:
    """Microseconds per image and stage, best of `repeats`, for each (model, its images):
    single-image `u8` messages in batches of `batch`, with the worker's default outputs
    (compact scores, full anomalies with the model headers).

    decode is `Decoder.decode`; onnx the model's scoring call; encode the rest of
    `BatchScorer.process` (range check, records); produce the librdkafka `produce` calls of
    the batch's outputs (into a producer whose broker is never reached, so only the call's
    own cost on the worker's thread is counted, then purged).
    """
    producer = Producer(
        {
            "bootstrap.servers": "127.0.0.1:9",
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_000_000,
            "linger.ms": 5,
            "log_level": 0,
            "error_cb": lambda error: None,
        }
    )
    return [
        _stages(name, model, images[:batch], producer, repeats)
        for name, (model, images) in models.items()
    ]


def _stages(
    name: str, model: Model, pixels: NDArray[np.float32], producer: Producer, repeats: int
) -> dict[str, Any]:
    count = len(pixels)
    messages = _messages(
        [
            encode_messages(pixels[k : k + 1], [f"img-{k}"], 1_764_169_200_000, "u8")
            for k in range(count)
        ]
    )
    scorer = BatchScorer(model)
    decoded = scorer.decoder.decode(messages).pixels
    result = scorer.process(messages)

    def produce() -> float:
        started = time.perf_counter()
        for key, value in result.scores:
            producer.produce("scores", value, key, headers=result.headers)
        for key, value in result.anomalies:
            producer.produce("anomalies", value, key, headers=result.headers)
        seconds = time.perf_counter() - started
        producer.purge(in_queue=True)  # not timed
        return seconds

    def score() -> object:
        return model.score(decoded, metric=scorer.metric, threshold=scorer.threshold)

    per = 1e6 / count
    decode = _best(lambda: scorer.decoder.decode(messages), repeats) * per
    onnx = _best(score, repeats) * per
    process = _best(lambda: scorer.process(messages), repeats) * per
    stages = {
        "decode": decode,
        "onnx": onnx,
        "encode": max(process - decode - onnx, 0.0),
        "produce": min(produce() for _ in range(repeats + 1)) * per,
    }
    return {
        "model": name,
        "pixels": model.shape.size,
        "images": count,
        **{f"{stage}_us": stages[stage] for stage in STAGES},
        "total_us": sum(stages.values()),
        "dominant": max(STAGES, key=lambda stage: stages[stage]),
    }


if __name__ == "__main__":
    result = own_cost(load_model(Path(sys.argv[1])))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
