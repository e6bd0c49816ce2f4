"""`pixelwatch train`: the command-line face of `train_and_export`."""

import argparse
import dataclasses
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

from model_export.architectures import ACTIVATIONS, ARCHITECTURES, parse_params
from model_export.defaults import (
    AUTO,
    CODE_PER_ROOT_PIXEL,
    COURSE_ARCH,
    COURSE_METRIC,
    MANY_ARCH,
    MANY_IMAGES,
    MANY_METRIC,
    MAX_CODE,
    MIN_CODE,
    ONE_KIND_LIKENESS,
)
from model_export.memory import MEMORY_FEATURES
from model_export.pipeline import MODES, OptionError, TrainOptions, TrainResult, train_and_export
from model_export.scaling import (
    COURSE_EPOCHS,
    COURSE_LR,
    EARLY_STOPPING_MIN,
    LR_DROPS,
    MAX_AUTO_BATCH,
    MAX_AUTO_EPOCHS,
    MAX_AUTO_LR,
    STEPS_PER_EPOCH,
    VALIDATION_FRACTION,
)
from model_export.train import LR_DROP
from service.cli.inputs import add_input_options, report_skipped
from service.scoring.similarity import METRICS

DEFAULTS = TrainOptions()


SHORTCUTS = ("hidden", "code", "activation")  # flags of their own; --arch-param takes the rest


STOPPING_RULE = (
    f"With fewer than {EARLY_STOPPING_MIN} images (the course trains on two) nothing is held "
    f"out: every one of --epochs runs ({COURSE_EPOCHS} by default), one image per optimiser step. "
    f"From {EARLY_STOPPING_MIN} images on, images are held out for early stopping: with "
    "--fpr the calibration split (20%, drawn first), so the epoch and the threshold are "
    "chosen on the same held-out images, never trained on; without --fpr "
    f"{VALIDATION_FRACTION:.0%} of the images. When their reconstruction loss has not improved "
    "for --patience epochs, "
    f"the learning rate is divided by {LR_DROP:g}; after {LR_DROPS} such plateaus the next one "
    "stops training, and the weights of the best epoch are kept. --epochs is then a maximum "
    f"({MAX_AUTO_EPOCHS} by default). "
    f"--batch-size auto is 1 below {EARLY_STOPPING_MIN} training images, else the power of two "
    f"nearest to 1/{STEPS_PER_EPOCH} of them (at most {MAX_AUTO_BATCH}). "
    f"--lr auto is {COURSE_LR:g} at batch size 1 and grows with the square root of the batch "
    f"size, up to {MAX_AUTO_LR:g}. --patience 0 turns early stopping off."
)
DEFAULTS_RULE = (
    f"Fewer than {MANY_IMAGES} images: the course's model, --arch {COURSE_ARCH} with its own "
    f"sizes and --metric {COURSE_METRIC}. From {MANY_IMAGES} images the rule measures how "
    "alike they are: their likeness is the mean cosine similarity of each image to the mean "
    "image, both thresholded at 0.5. Images of one kind (likeness at least "
    f"{ONE_KIND_LIKENESS:.2f}, as one digit's images) keep the course's model. Images of many "
    f"kinds (below {ONE_KIND_LIKENESS:.2f}, as nine digits' images) get --arch {MANY_ARCH} with "
    f"a code of {CODE_PER_ROOT_PIXEL} x sqrt(pixels), rounded, within {MIN_CODE}..{MAX_CODE} "
    f"(32 at 8x8), and --metric {MANY_METRIC}. A flag given always wins; the code size is "
    "chosen only with the architecture. train prints the choice and the likeness."
)
STOPPING_HELP = (
    "how long training runs (--epochs, --patience, --batch-size and --lr auto):\n"
    + textwrap.fill(STOPPING_RULE, width=88, initial_indent="  ", subsequent_indent="  ")
    + "\n\nthe model (--arch and --metric auto):\n"
    + textwrap.fill(DEFAULTS_RULE, width=88, initial_indent="  ", subsequent_indent="  ")
    + "\n"
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = STOPPING_HELP + "\n" + architectures_help()
    parser.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="normal images: X/. text, .csv, .npy, a PNG/JPEG file, a folder of them "
        "or a quoted glob such as 'images/*.png'",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="MODEL.onnx", help="scoring graph to write"
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--arch",
        choices=[*sorted(ARCHITECTURES), AUTO],
        default=AUTO,
        help="autoencoder architecture; auto: chosen from the data, see below "
        "(default: %(default)s)",
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
        "--code",
        type=int,
        metavar="N",
        help="bottleneck size (same as --arch-param code=N; with --arch auto chosen from the "
        "image size, see below)",
    )
    model.add_argument(
        "--activation", choices=ACTIVATIONS, help="output activation (dense default: tanh)"
    )

    training = parser.add_argument_group("training")
    training.add_argument(
        "--epochs",
        type=whole_or_auto,
        default=DEFAULTS.epochs,
        metavar="N|auto",
        help="the most passes over the training images (default: %(default)s, see below)",
    )
    training.add_argument(
        "--patience",
        type=int,
        default=DEFAULTS.patience,
        metavar="N",
        help="stop after N epochs without held-out improvement; 0: never stop early "
        "(default: %(default)s)",
    )
    training.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        metavar="N",
        help="seeds initialisation, shuffling and the held-out split (default: %(default)s)",
    )
    training.add_argument(
        "--lr",
        type=learning_rate,
        default=DEFAULTS.lr,
        metavar="LR|auto",
        help="Adam learning rate (default: %(default)s, see below)",
    )
    training.add_argument(
        "--batch-size",
        type=whole_or_auto,
        default=DEFAULTS.batch_size,
        metavar="N|auto",
        help="images per optimiser step (default: %(default)s, see below)",
    )
    training.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_input_options(parser)

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--metric",
        choices=[*METRICS, AUTO],
        default=AUTO,
        help="similarity the threshold applies to; auto: chosen from the data, see below "
        "(default: %(default)s)",
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
    scoring.add_argument(
        "--memory-features",
        choices=MEMORY_FEATURES,
        default=DEFAULTS.memory_features,
        help="what the memory bank stores of each training image: its code, or its code and "
        "the encoder's first layer of features (the distance is then the geometric mean of "
        "the two; the best leave-one-out digits configuration in docs/benchmarks.md; not for "
        "seq2seq) (default: %(default)s)",
    )


def whole_or_auto(text: str) -> int | Literal["auto"]:
    """--batch-size and --epochs: a whole number, or auto."""
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number or auto: {text!r}") from None


def learning_rate(text: str) -> float | Literal["auto"]:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or auto: {text!r}") from None


def architectures_help() -> str:
    """The --arch choices with their hyper-parameters and defaults, for --help."""
    lines = ["architectures (--arch) and their --arch-param defaults:"]
    for name, spec in ARCHITECTURES.items():
        params = " ".join(f"{k}={v}" for k, v in dataclasses.asdict(spec.params()).items())
        lines.append(f"  {name:<12} {spec.summary}\n  {'':<12} {params}")
    return "\n".join(lines)


def arch_params_from(args: argparse.Namespace) -> dict[str, Any]:
    """--arch-param KEY=VALUE pairs, plus the --hidden/--code/--activation shortcuts."""
    # With --arch auto the pairs are read as the larger sets' architecture's; they are
    # checked again against the architecture the data chooses.
    params = parse_params(MANY_ARCH if args.arch == AUTO else args.arch, args.arch_param)
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
        patience=args.patience,
        progress=not args.no_progress,
        binarize=args.binarize,
        skip_bad=args.skip_bad,
        memory_size=args.memory_size,
        memory_k=args.memory_k,
        memory_features=args.memory_features,
    )


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    result = train_and_export(Path(args.data), args.out, options)
    report_skipped(result.skipped, sys.stderr)
    print(summary(result, options))
    return 0


def summary(result: TrainResult, options: TrainOptions) -> str:
    meta, trained = result.metadata, result.trained
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.timings.items())
    held = len(result.validation_indices)
    most = result.settings.epochs
    if held:
        stop = (
            f"stopped at epoch {trained.epochs_run} of {most}"
            if trained.epochs_run < most
            else f"ran all {most} epochs"
        )
        epochs = f"{stop}, kept epoch {trained.kept_epoch} (best loss on {held} held-out images)"
        loss = (
            f"{meta.final_loss:.4g} (training, epoch {trained.kept_epoch}); held-out "
            f"{trained.holdout_losses[trained.kept_epoch - 1]:.4g}"
        )
    else:
        epochs = f"{most}, no early stopping"
        loss = f"{meta.final_loss:.4g} (mean of the last epoch)"
    lines = [
        f"trained a {meta.arch} autoencoder on {len(result.train_indices)} images "
        f"({trained.epochs_run} epochs, batch size {result.settings.batch_size}, "
        f"lr {result.settings.lr:g}, {meta.mode} mode, seed {options.seed})",
        f"model      {result.model_path}",
        f"report     {result.report_path or '-'}",
        f"threshold  {meta.threshold:.4g} on {meta.metric}: anomaly if similarity < threshold",
        f"chosen     {result.calibration.describe()}",
        *([f"defaults   {result.defaults.describe()}"] if result.defaults.chosen else []),
        f"epochs     {epochs}",
        f"loss       {loss}",
        f"time       {result.seconds:.1f} s ({stages})",
    ]
    if result.skipped:
        lines.insert(1, f"skipped    {len(result.skipped)} unreadable image files (listed above)")
    return "\n".join(lines)
