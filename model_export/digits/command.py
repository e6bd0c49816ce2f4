"""The benchmark's command: run the protocols, print their tables, save them (`table.md`)
with every run (`results.json`)."""

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import sklearn
import torch
from rich.console import Console

from model_export.digits.protocol import (
    ALL_MODES,
    MODES,
    PROTOCOLS,
    Protocol,
    ProtocolError,
    ProtocolName,
    Run,
    run_protocol,
)
from model_export.digits.table import Row, Verdict, markdown, rich_tables, summarise, targets
from model_export.memory import MEMORY_FEATURES
from service.errors import PixelwatchError

DEFAULT_OUT: Final = Path("artifacts/eval-digits")


Verdicts = dict[ProtocolName, Verdict]
PROTOCOL_CHOICES: Final[dict[str, tuple[ProtocolName, ...]]] = {
    **{name: (name,) for name in PROTOCOLS},
    "both": PROTOCOLS,
}


def as_json(
    protocol: Protocol,
    runs: Sequence[Run],
    rows: Sequence[Row],
    verdicts: Verdicts,
    seconds: float,
    usage: dict[str, Any],
) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "protocol": asdict(protocol),
        "environment": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "scikit-learn": sklearn.__version__,
            "cpus": os.cpu_count(),
        },
        "seconds": seconds,
        "usage": usage,
        "targets": {k: {"met": v.met, "lines": v.lines} for k, v in verdicts.items()},
        "table": [asdict(row) for row in rows],
        "runs": [asdict(run) for run in runs],
    }


def _load() -> list[float] | None:
    """1, 5 and 15 minute load averages: the machine may be shared while the run times."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the training processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _classes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of digits: {text}") from None


def build_parser() -> argparse.ArgumentParser:
    default = Protocol()
    parser = argparse.ArgumentParser(
        prog="python -m model_export.digits",
        description="AUROC of every architecture and metric against classical baselines on "
        "scikit-learn's 8x8 digits: one digit normal (one-class) and nine digits normal "
        "(leave-one-out).",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOL_CHOICES,
        default="both",
        help="one-class, leave-one-out, or both (default: %(default)s)",
    )
    parser.add_argument(
        "--archs",
        type=_names,
        default=default.archs,
        metavar="A,B,...",
        help="architectures trained with the benchmark's settings ('': none, only the "
        "defaults row and the baselines)",
    )
    parser.add_argument(
        "--modes",
        type=_names,
        default=default.modes,
        metavar="M,...",
        help=f"some of {', '.join(ALL_MODES)} (default: {','.join(MODES)})",
    )
    parser.add_argument("--classes", type=_classes, default=default.classes, metavar="0,1,...")
    parser.add_argument("--repetitions", type=int, default=default.repetitions, metavar="N")
    parser.add_argument("--train-fraction", type=float, default=default.train_fraction)
    parser.add_argument(
        "--epochs",
        type=int,
        default=default.epochs,
        metavar="N",
        help="one-class training epochs (default: %(default)s)",
    )
    parser.add_argument(
        "--loo-epochs",
        type=int,
        default=default.loo_epochs,
        metavar="N",
        help="leave-one-out training epochs (default: %(default)s)",
    )
    parser.add_argument(
        "--loo-code",
        type=int,
        default=default.loo_code,
        metavar="N",
        help="leave-one-out code size of every architecture; 0: their defaults "
        "(default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=default.batch_size, metavar="N")
    parser.add_argument("--lr", type=float, default=default.lr)
    parser.add_argument("--seed", type=int, default=default.seed, metavar="N")
    parser.add_argument(
        "--memory-size",
        type=int,
        default=default.memory_size,
        metavar="N",
        help="codes the architectures' scoring graphs store at most, as train's --memory-size "
        "(default: %(default)s; the defaults row keeps train's own)",
    )
    parser.add_argument(
        "--memory-features",
        choices=MEMORY_FEATURES,
        default=default.memory_features,
        help="what the architectures' memory banks store, as train's --memory-features "
        "(default: %(default)s; the defaults row keeps train's own)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=default.size,
        metavar="N",
        help="score the digits upscaled (bilinear) to NxN pixels, e.g. 28 as MNIST "
        "(default: %(default)s, the digits as they are)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        metavar="N",
        help="training processes (results do not depend on it; default: %(default)s)",
    )
    parser.add_argument(
        "--no-defaults",
        action="store_true",
        help="leave out the defaults row (pixelwatch train with only --data and --mode)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=140)  # a log file: do not wrap the table
    try:
        protocol = Protocol(
            protocols=PROTOCOL_CHOICES[args.protocol],
            archs=args.archs,
            modes=args.modes,
            classes=args.classes,
            repetitions=args.repetitions,
            train_fraction=args.train_fraction,
            epochs=args.epochs,
            loo_epochs=args.loo_epochs,
            loo_code=args.loo_code,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            defaults=not args.no_defaults,
            size=args.size,
            memory_size=args.memory_size,
            memory_features=args.memory_features,
        )
        if args.jobs < 1:
            raise ProtocolError("--jobs must be >= 1")
        load_before, cpu_before = _load(), _cpu_seconds()
        start = time.perf_counter()
        runs = run_protocol(protocol, jobs=args.jobs, progress=not args.no_progress)
        seconds = time.perf_counter() - start
        usage = {
            "jobs": args.jobs,
            "cpu_seconds": _cpu_seconds() - cpu_before,
            "load_average_before": load_before,
            "load_average_after": _load(),
        }
        rows = summarise(runs, protocol)
        verdicts = targets(rows, protocol)
        written = write_results(args.out, protocol, runs, rows, verdicts, seconds, usage)
    except PixelwatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for kind, table in zip(protocol.protocols, rich_tables(rows, protocol), strict=True):
        console.print(table)
        for line in verdicts[kind].lines:
            console.print(f"- {line}")
    console.print(
        f"{len(runs)} runs in {seconds:.0f} s with --jobs {args.jobs} "
        f"({usage['cpu_seconds']:.0f} CPU seconds; load average {load_before} before, "
        f"{usage['load_average_after']} after); wrote {', '.join(map(str, written))}"
    )
    return 0


def write_results(
    out: Path,
    protocol: Protocol,
    runs: Sequence[Run],
    rows: Sequence[Row],
    verdicts: Verdicts,
    seconds: float,
    usage: dict[str, Any],
) -> list[Path]:
    table, results = out / "table.md", out / "results.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
        table.write_text(markdown(rows, protocol, verdicts), encoding="utf-8")
        payload = as_json(protocol, runs, rows, verdicts, seconds, usage)
        results.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ProtocolError(f"cannot write {exc.filename or out}: {exc.strerror}") from None
    return [table, results]
