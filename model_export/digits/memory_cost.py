"""What the memory bank costs: graph size and scoring throughput against the stored codes.

`measure_memory_cost` trains one network on the digits (shifted by up to a pixel, for up to
16,173 training codes), exports one scoring graph per bank size (`--memory-size`), and times
`Model.score` (the runtime's one onnxruntime call, one thread, as the worker runs it) per
batch size. Every figure is also given as a ratio to the smallest bank of the same run, so
the machine's speed cancels out. `python -m model_export.digits.memory_cost` prints the
table docs/benchmarks.md shows; other code (the benchmark suite) can call the function.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np

import service
from model_export.architectures import ARCHITECTURES
from model_export.digits.protocol import SHAPE, digits
from model_export.export import export_scoring_graph, scoring_graph
from model_export.memory import MemorySettings
from model_export.train import FitSettings, train
from service.scoring.images import Pixels
from service.scoring.model import FORMAT_VERSION, MemoryInfo, Model, ModelMetadata, load_model

SIZES: Final = (1, 64, 256, 1024, 4096, 16384)
BATCHES: Final = (1, 64, 500)  # 500: the worker's default batch size


@dataclass(frozen=True)
class CostPoint:
    """One bank size at one batch size."""

    codes: int  # stored codes (fewer than asked when there are fewer training images)
    graph_bytes: int
    batch: int
    seconds_per_batch: float  # median over the timed calls
    images_per_second: float
    bytes_ratio: float  # against the smallest bank measured
    speed_ratio: float  # images/s against the smallest bank at the same batch size


def shifted_digits() -> Pixels:
    """The 1797 gray digits and their eight one-pixel shifts (blank edges): 16,173 images."""
    pixels, _ = digits()
    square = pixels.reshape(-1, SHAPE.height, SHAPE.width)
    shifted = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            moved = np.roll(square, (dy, dx), axis=(1, 2))
            if dy:
                moved[:, 0 if dy > 0 else -1, :] = 0.0
            if dx:
                moved[:, :, 0 if dx > 0 else -1] = 0.0
            shifted.append(moved.reshape(-1, SHAPE.size))
    return np.ascontiguousarray(np.concatenate(shifted), dtype=np.float32)


def measure_memory_cost(
    sizes: Sequence[int] = SIZES,
    batches: Sequence[int] = BATCHES,
    *,
    arch: str = "dense",
    code: int | None = None,
    epochs: int = 5,
    min_seconds: float = 0.3,
    seed: int = 0,
) -> list[CostPoint]:
    """Graph bytes and images/s for every bank size and batch size (see the module doc)."""
    data = shifted_digits()
    settings = FitSettings(epochs=epochs, batch_size=256, lr=3e-3, seed=seed)
    params = {} if code is None else {"code": code}
    network = train(arch, SHAPE, params, data, settings).autoencoder
    probe = data[np.random.default_rng(seed).permutation(len(data))[: max(batches)]]
    points: list[CostPoint] = []
    with tempfile.TemporaryDirectory(prefix="pixelwatch-memory-cost-") as directory:
        for size in sizes:
            memory = MemorySettings(codes=size, seed=seed)
            graph = scoring_graph(network, "gray", data, None, memory)
            path = Path(directory) / f"memory-{size}.onnx"
            export_scoring_graph(graph, SHAPE.size, _metadata(graph.memory_info), path)
            model = load_model(path, threads=1)
            for batch in batches:
                seconds = _time(functools.partial(_score, model, probe[:batch]), min_seconds)
                points.append(
                    CostPoint(
                        codes=graph.memory_info.codes,
                        graph_bytes=path.stat().st_size,
                        batch=batch,
                        seconds_per_batch=seconds,
                        images_per_second=batch / seconds,
                        bytes_ratio=0.0,
                        speed_ratio=0.0,
                    )
                )
    return _with_ratios(points)


def _score(model: Model, pixels: Pixels) -> None:
    model.score(pixels)


def _metadata(memory: MemoryInfo) -> ModelMetadata:
    return ModelMetadata(
        format_version=FORMAT_VERSION,
        width=SHAPE.width,
        height=SHAPE.height,
        mode="gray",
        metric="memory",
        threshold=0.6,
        training_sha256="0" * 64,
        pixelwatch_version=service.__version__,
        created_at=datetime.now(UTC),
        final_loss=0.0,
        memory=memory,
    )


def _time(call: Callable[[], None], min_seconds: float) -> float:
    """Median seconds of one call, over as many calls as fill `min_seconds` (at least 5)."""
    call()  # warm-up: onnxruntime allocates on the first run
    timings: list[float] = []
    spent = 0.0
    while len(timings) < 5 or spent < min_seconds:
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        timings.append(elapsed)
        spent += elapsed
    return statistics.median(timings)


def _with_ratios(points: list[CostPoint]) -> list[CostPoint]:
    smallest = min(p.codes for p in points)
    base_bytes = next(p.graph_bytes for p in points if p.codes == smallest)
    base_speed = {p.batch: p.images_per_second for p in points if p.codes == smallest}
    return [
        CostPoint(
            **{
                **asdict(p),
                "bytes_ratio": p.graph_bytes / base_bytes,
                "speed_ratio": p.images_per_second / base_speed[p.batch],
            }
        )
        for p in points
    ]


def markdown(points: Sequence[CostPoint]) -> str:
    """Rows: bank sizes; columns: graph size, then images/s (and ratio) per batch size."""
    batches = sorted({p.batch for p in points})
    head = ["stored codes", "graph"] + [f"images/s, batch {b}" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for codes in sorted({p.codes for p in points}):
        mine = {p.batch: p for p in points if p.codes == codes}
        first = mine[batches[0]]
        cells = [f"{codes:,}", f"{first.graph_bytes / 1024:,.0f} KiB ({first.bytes_ratio:.2f}x)"]
        cells += [f"{mine[b].images_per_second:,.0f} ({mine[b].speed_ratio:.2f}x)" for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export.digits.memory_cost",
        description="Graph size and scoring throughput against the memory bank's size.",
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), metavar="N,...")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), metavar="N,...")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="dense")
    parser.add_argument("--code", type=int, metavar="N", help="code size (default: the arch's)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure here")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        print("error: --sizes and --batches take comma-separated whole numbers", file=sys.stderr)
        return 2
    if min(sizes + batches + [args.code or 1]) < 1:
        print("error: --sizes, --batches and --code must be >= 1", file=sys.stderr)
        return 2
    load = os.getloadavg()
    points = measure_memory_cost(sizes, batches, arch=args.arch, code=args.code)
    print(markdown(points))
    print(f"load average before the run: {load[0]:.2f} (on {os.cpu_count()} cores)")
    if args.json is not None:
        payload = {"load_average": load, "points": [asdict(p) for p in points]}
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
