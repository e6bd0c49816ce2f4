"""`pixelwatch train`: the command-line face of `train_and_export`."""

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from model_export.architectures import ACTIVATIONS, ARCHITECTURES, parse_params
from model_export.pipeline import MODES, OptionError, TrainOptions, TrainResult, train_and_export
from service.scoring.similarity import METRICS

DEFAULTS = TrainOptions()


SHORTCUTS = ("hidden", "code", "activation")  # flags of their own; --arch-param takes the rest


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = architectures_help()
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="PATH",
        help="normal images: X/. text, .csv or .npy",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="MODEL.onnx", help="scoring graph to write"
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--arch",
        choices=sorted(ARCHITECTURES),
        default=DEFAULTS.arch,
        help="autoencoder architecture (default: %(default)s)",
    )
    model.add_argument(
        "--mode",
        choices=MODES,
        default=DEFAULTS.mode,
        help="binary: reconstruction thresholded at 0.5, as in the course; "
        "gray: clamped to [0, 1] (default: %(default)s)",
    )
    model.add_argument(
        "--width",
        type=int,
        default=DEFAULTS.width,
        help="image width in pixels (default: %(default)s)",
    )
    model.add_argument(
        "--height",
        type=int,
        default=DEFAULTS.height,
        help="image height in pixels (default: %(default)s)",
    )
    model.add_argument(
        "--arch-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an architecture hyper-parameter (repeatable; see the list below)",
    )
    model.add_argument(
        "--hidden", type=int, metavar="N", help="hidden layer size (same as --arch-param hidden=N)"
    )
    model.add_argument(
        "--code", type=int, metavar="N", help="bottleneck size (same as --arch-param code=N)"
    )
    model.add_argument(
        "--activation", choices=ACTIVATIONS, help="output activation (dense default: tanh)"
    )

    training = parser.add_argument_group("training")
    training.add_argument(
        "--epochs",
        type=int,
        default=DEFAULTS.epochs,
        metavar="N",
        help="passes over the training images (default: %(default)s)",
    )
    training.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        metavar="N",
        help="seeds initialisation, shuffling and the held-out split (default: %(default)s)",
    )
    training.add_argument(
        "--lr", type=float, default=DEFAULTS.lr, help="Adam learning rate (default: %(default)g)"
    )
    training.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS.batch_size,
        metavar="N",
        help="images per optimiser step (default: %(default)s)",
    )
    training.add_argument("--no-progress", action="store_true", help="no progress bar")

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--metric",
        choices=METRICS,
        default=DEFAULTS.metric,
        help="similarity the threshold applies to (default: %(default)s)",
    )
    threshold = scoring.add_mutually_exclusive_group()
    threshold.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="anomaly if similarity < T (default: the course's 0.60)",
    )
    threshold.add_argument(
        "--fpr",
        type=float,
        metavar="F",
        help="calibrate the threshold to flag this fraction of held-out normal images",
    )
    scoring.add_argument(
        "--memory-size",
        type=int,
        default=DEFAULTS.memory_size,
        metavar="N",
        help="latent codes the graph stores at most, for the memory and combined metrics; "
        "more training images are reduced to a greedy k-center coreset (default: %(default)s)",
    )
    scoring.add_argument(
        "--memory-k",
        type=int,
        default=DEFAULTS.memory_k,
        metavar="K",
        help="memory distance: to the K-th nearest stored code (default: %(default)s)",
    )


def architectures_help() -> str:
    """The --arch choices with their hyper-parameters and defaults, for --help."""
    lines = ["architectures (--arch) and their --arch-param defaults:"]
    for name, spec in ARCHITECTURES.items():
        params = " ".join(f"{k}={v}" for k, v in dataclasses.asdict(spec.params()).items())
        lines.append(f"  {name:<12} {spec.summary}\n  {'':<12} {params}")
    return "\n".join(lines)


def arch_params_from(args: argparse.Namespace) -> dict[str, Any]:
    """--arch-param KEY=VALUE pairs, plus the --hidden/--code/--activation shortcuts."""
    params = parse_params(args.arch, args.arch_param)
    for name in SHORTCUTS:
        value = getattr(args, name)
        if value is None:
            continue
        if name in params:
            raise OptionError(f"--{name} and --arch-param {name}=... both given; give one")
        params[name] = value
    return params


def options_from(args: argparse.Namespace) -> TrainOptions:
    arch_params = arch_params_from(args)
    return TrainOptions(
        epochs=args.epochs,
        seed=args.seed,
        mode=args.mode,
        metric=args.metric,
        threshold=args.threshold,
        fpr=args.fpr,
        width=args.width,
        height=args.height,
        arch=args.arch,
        arch_params=arch_params,
        lr=args.lr,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        memory_size=args.memory_size,
        memory_k=args.memory_k,
    )


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    result = train_and_export(args.data, args.out, options)
    print(summary(result, options))
    return 0


def summary(result: TrainResult, options: TrainOptions) -> str:
    meta = result.metadata
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.timings.items())
    lines = [
        f"trained a {meta.arch} autoencoder on {len(result.train_indices)} images "
        f"({options.epochs} epochs, {meta.mode} mode, seed {options.seed})",
        f"model      {result.model_path}",
        f"report     {result.report_path or '-'}",
        f"threshold  {meta.threshold:.4g} on {meta.metric}: anomaly if similarity < threshold",
        f"chosen     {result.calibration.describe()}",
        f"loss       {meta.final_loss:.4g} (mean of the last epoch)",
        f"time       {result.seconds:.1f} s ({stages})",
    ]
    return "\n".join(lines)
