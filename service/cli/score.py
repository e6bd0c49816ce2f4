"""`pixelwatch score`: score an image file offline with an exported model."""

import argparse
import sys

import orjson
from rich.console import Console

from service.cli.inputs import add_input_options, report_skipped
from service.errors import PixelwatchError
from service.scoring.images import ImageShape, Pixels, read_images, render
from service.scoring.model import ScoredBatch, load_model
from service.scoring.similarity import METRICS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", help="images: X/. text, .csv, .npy, PNG/JPEG, a folder of them or a quoted glob"
    )
    parser.add_argument(
        "--model", required=True, help="scoring graph (.onnx) from `pixelwatch train`"
    )
    parser.add_argument(
        "--metric", choices=METRICS, help="similarity to judge by (default: the model's)"
    )
    parser.add_argument("--threshold", type=float, help="anomaly below this (default: the model's)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    add_input_options(parser)


def run(args: argparse.Namespace) -> int:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise PixelwatchError(f"--threshold {args.threshold} is outside [0, 1]")
    model = load_model(args.model)
    images = read_images(args.path, model.shape, binarize=args.binarize, skip_bad=args.skip_bad)
    report_skipped(images.skipped, sys.stderr)
    result = model.score(images.pixels, metric=args.metric, threshold=args.threshold)
    if args.json:
        _print_json(result, images.labels)
    else:
        _print_art(result, images.pixels, images.labels, model.shape)
    return 0


def _print_json(result: ScoredBatch, labels: tuple[str, ...]) -> None:
    out = sys.stdout.buffer
    for index, label in enumerate(labels):
        record = {
            "index": index,
            "where": label,
            "similarity": float(result.similarity[index]),
            "metric": result.metric,
            "threshold": result.threshold,
            "anomaly": bool(result.anomaly[index]),
            "scores": {m: float(v[index]) for m, v in result.scores.items()},
        }
        out.write(orjson.dumps(record) + b"\n")
    out.flush()


def _print_art(
    result: ScoredBatch, pixels: Pixels, labels: tuple[str, ...], shape: ImageShape
) -> None:
    console = Console(highlight=False)
    flagged = 0
    for index, label in enumerate(labels):
        anomaly = bool(result.anomaly[index])
        flagged += anomaly
        verdict = "[bold red]ANOMALY[/]" if anomaly else "[green]normal[/]"
        console.print(
            f"#{index} ({label})  {result.metric} {result.similarity[index]:.1%}  {verdict}"
        )
        console.print(f"{'input':<{shape.width}}   reconstruction", style="dim")
        left_rows = render(pixels[index], shape)
        right_rows = render(result.reconstruction[index], shape)
        for left, right in zip(left_rows, right_rows, strict=True):
            console.print(f"{left}   {right}")
        console.print()
    console.print(
        f"{flagged} of {len(labels)} images below the {result.metric} threshold "
        f"{result.threshold:.0%}"
    )
