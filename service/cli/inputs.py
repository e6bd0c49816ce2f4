"""Options shared by every command that reads images: `--binarize` and `--skip-bad`."""

import argparse
from collections.abc import Sequence
from typing import TextIO


def unit_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (got {text})")
    return value


def add_input_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "image input",
        "a PATH may be an X/. text, .csv or .npy file, a PNG or JPEG file, a folder of "
        "PNG/JPEG files or a quoted glob pattern; image files are converted to grayscale "
        "(dark = 1) and resized to the model's size",
    )
    group.add_argument(
        "--binarize",
        type=unit_threshold,
        metavar="T",
        help="make pixels binary: values >= T become 1 (black), the others 0",
    )
    group.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable image files of a folder or pattern, and list them on stderr",
    )


def report_skipped(skipped: Sequence[str], stream: TextIO) -> None:
    """One stderr line per skipped file, each `skipped FILE:image: what is wrong`."""
    for line in skipped:
        print(f"skipped {line}", file=stream)
