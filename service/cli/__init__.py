"""The `pixelwatch` command: one entry point, a subcommand per job.

Each subcommand lives in its own module exposing `configure_parser(parser)` and `run(args)`;
modules are imported only when their subcommand runs, so `pixelwatch worker` never loads
torch and `pixelwatch --help` stays fast.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from service import __version__
from service.errors import PixelwatchError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("model_export.command", "train an autoencoder on normal images and export ONNX"),
    "score": ("service.cli.score", "score an image file offline with an exported model"),
    "evaluate": (
        "model_export.evaluate",
        "measure detection quality on normal and anomalous images",
    ),
    "worker": ("service.cli.worker", "run the stream worker on Kafka"),
    "model": ("service.cli.model", "publish, list, roll back, promote and watch models"),
    "produce": ("service.cli.produce", "send images from a file to the input topic"),
    "dlq": ("service.cli.dlq", "replay dead letters to the input topic"),
    "broker": ("service.cli.broker", "run a local single-node Apache Kafka for development"),
    "demo": ("service.cli.demo", "train, stream and show live anomalies end to end"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelwatch", description="Streaming anomaly detection for small images."
    )
    parser.add_argument("--version", action="version", version=f"pixelwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module).configure_parser(sub)
    return parser


def _selected(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if a in SUBCOMMANDS), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = _selected(argv)
    try:
        module = importlib.import_module(SUBCOMMANDS[selected][0]) if selected else None
    except ModuleNotFoundError as exc:
        if (
            selected in {"train", "evaluate"}
            and exc.name
            and exc.name.split(".")[0] in {"torch", "onnx", "sklearn", "matplotlib"}
        ):
            print(
                "error: training needs the train extra: pip install 'pixelwatch[train]'",
                file=sys.stderr,
            )
            return 2
        raise
    args = build_parser(selected).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # aiokafka narrates every group join and metadata update at INFO.
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    assert module is not None  # argparse requires a subcommand
    try:
        return int(module.run(args))
    except PixelwatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
