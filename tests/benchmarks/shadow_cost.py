"""What shadow scoring costs the data path, measured in-process.

    python tests/benchmarks/shadow_cost.py LIVE.onnx SHADOW.onnx [--batch-size 500]

The same batches of image messages (the bench's images, encoded as `pixelwatch produce`
sends them) go through what the data plane runs per batch: `BatchScorer.process` (decode,
one onnxruntime call, encode), alone and then followed by `ShadowScorer.score` (one more
onnxruntime call on the decoded pixels, one shadow record per image) and the drift window's
per-batch binning. Each variant runs `rounds` times, interleaved, and the fastest round of
each counts, which keeps other load on the machine out of the ratio. Producing the shadow
records to Kafka is not included: that is the broker's and librdkafka's share, which the
bench's end-to-end runs see.

`shadow_cost(...)` returns the figures as a dict, for `make bench` to report beside its own.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from service.cli.produce import encode
from service.dataplane.pipeline import BatchScorer
from service.dataplane.shadow import ShadowScorer
from service.scoring.model import load_model
from service.scoring.reference import histogram

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:  # run as a script: the bench module sits beside it
    sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.bench import make_images  # noqa: E402


def messages(count: int, anomalous_share: float, seed: int) -> list[Message]:
    images = make_images(count, anomalous_share, seed=seed)
    now = int(time.time() * 1000)
    return [
        Message(
            topic="images",
            partition=i % 4,
            offset=i,
            key=f"m{i}".encode(),
            value=encode(pixels, f"m{i}", now),
            timestamp=(TIMESTAMP_CREATE_TIME, now),
        )
        for i, pixels in enumerate(images)
    ]


def shadow_cost(
    live_model: Path,
    shadow_model: Path,
    *,
    batch_size: int = 500,
    batches: int = 40,
    rounds: int = 5,
    anomalous_share: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Seconds per batch with and without a shadow, the fastest of `rounds`, and their ratio."""
    live = BatchScorer(load_model(live_model))
    shadow = ShadowScorer(BatchScorer(load_model(shadow_model)))
    consumed = messages(batch_size * batches, anomalous_share, seed)
    work = [consumed[i : i + batch_size] for i in range(0, len(consumed), batch_size)]

    def alone() -> None:
        for batch in work:
            result = live.process(batch)
            histogram(result.similarity)

    def shadowed() -> None:
        for batch in work:
            result = live.process(batch)
            verdicts = shadow.score(live, result)
            histogram(result.similarity)
            int((verdicts.anomaly == result.anomaly).sum())

    alone()  # warm-up: onnxruntime's first calls and the decoder's caches
    shadowed()
    best = {"alone": float("inf"), "shadowed": float("inf")}
    for _ in range(rounds):
        for name, run in (("alone", alone), ("shadowed", shadowed)):
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    images = batch_size * batches
    onnx = _onnx_share(live, shadow, work)
    return {
        "batch_size": batch_size,
        "batches": batches,
        "rounds": rounds,
        "us_per_image_live": best["alone"] / images * 1e6,
        "us_per_image_with_shadow": best["shadowed"] / images * 1e6,
        "ratio": best["shadowed"] / best["alone"],
        "us_per_image_shadow_onnx_call": onnx * 1e6,
    }


def _onnx_share(live: BatchScorer, shadow: ShadowScorer, work: list[list[Message]]) -> float:
    """Seconds per image of the shadow's onnxruntime call alone (its share of the cost)."""
    pixels = [live.process(batch).pixels for batch in work]
    model = shadow.scorer.model
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for rows in pixels:
            model.score(rows)
        best = min(best, time.perf_counter() - started)
    return best / sum(len(rows) for rows in pixels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("live", type=Path)
    parser.add_argument("shadow", type=Path)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    figures = shadow_cost(
        args.live,
        args.shadow,
        batch_size=args.batch_size,
        batches=args.batches,
        rounds=args.rounds,
    )
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
