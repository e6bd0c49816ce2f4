"""`train_and_export`: read normal images, train, export the graph, calibrate, report.

The order matters: the graph is exported first, the threshold is then calibrated by scoring
held-out images with the runtime's own `load_model(...).score(...)`, written into the graph's
metadata with the reference data for checks in service (golden images, the similarity
histogram: model_export/reference.py), and only then does the file appear at its final path
(an atomic rename).
"""

import dataclasses
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

import service
from model_export.architectures import (
    ARCHITECTURES,
    ArchitectureError,
    Autoencoder,
    resolve_params,
)
from model_export.calibrate import (
    Calibration,
    calibrate,
    check_fpr,
    check_fpr_range,
    fixed,
    split_holdout,
)
from model_export.defaults import AUTO, Choice, choose
from model_export.export import ScoringGraph, export_scoring_graph, scoring_graph, write_metadata
from model_export.memory import (
    DEFAULT_CODES,
    DEFAULT_K,
    MEMORY_FEATURES,
    MemorySettings,
)
from model_export.reference import with_reference
from model_export.report import MAX_EXAMPLES, ReportData, report_path, write_report
from model_export.scaling import (
    DEFAULT_PATIENCE,
    EARLY_STOPPING_MIN,
    LR_DROPS,
    auto_batch_size,
    auto_epochs,
    auto_lr,
    validation_split,
)
from model_export.train import FitSettings, Trained, train
from service.errors import InputError, PixelwatchError
from service.scoring.images import ImageSet, ImageShape, Pixels, read_images
from service.scoring.model import FORMAT_VERSION, MemoryFeatures, Mode, ModelMetadata, load_model
from service.scoring.similarity import METRICS, MetricName

log = logging.getLogger(__name__)

MODES: Final[tuple[Mode, ...]] = ("binary", "gray")


class OptionError(PixelwatchError):
    """A training option is out of range or contradicts another."""


class OutputError(PixelwatchError):
    """The model or its report could not be written."""


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Everything that shapes a trained model; validated on construction."""

    epochs: int | Literal["auto"] = "auto"
    seed: int = 0
    mode: Mode = "binary"
    metric: MetricName | Literal["auto"] = "hamming"  # auto: model_export/defaults.py
    threshold: float | None = None
    fpr: float | None = None
    width: int = 8
    height: int = 8
    arch: str = "dense"  # or auto, chosen from the data (model_export/defaults.py)
    arch_params: Mapping[str, Any] = field(default_factory=dict)
    lr: float | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    patience: int = DEFAULT_PATIENCE  # 0: never stop early
    progress: bool = False
    report: bool = True
    binarize: float | None = None  # image values >= this become 1, the others 0
    skip_bad: bool = False  # skip unreadable image files (and say which) instead of failing
    memory_size: int = DEFAULT_CODES  # latent codes stored at most (a coreset beyond)
    memory_k: int = DEFAULT_K  # memory distance: to the k-th nearest stored code
    memory_features: MemoryFeatures = "code"  # or code+first-layer: what the bank stores

    def __post_init__(self) -> None:
        for name in ("epochs", "width", "height", "batch_size", "memory_size", "memory_k"):
            value = getattr(self, name)
            if name in {"batch_size", "epochs"} and value == "auto":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{_flag(name)} must be a whole number >= 1 (got {value!r})")
        if (
            isinstance(self.patience, bool)
            or not isinstance(self.patience, int)
            or self.patience < 0
        ):
            raise OptionError(f"--patience must be a whole number >= 0 (got {self.patience!r})")
        if self.binarize is not None and not 0.0 < self.binarize <= 1.0:
            raise OptionError(f"--binarize must be in (0, 1] (got {self.binarize:g})")
        if not 0 <= self.seed < 2**63:
            raise OptionError(f"--seed must be between 0 and 2**63 - 1 (got {self.seed})")
        if self.mode not in MODES:
            raise OptionError(f"--mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.metric not in (*METRICS, AUTO):
            known = ", ".join((*METRICS, AUTO))
            raise OptionError(f"--metric must be one of {known} (got {self.metric!r})")
        if self.lr != "auto":
            number = isinstance(self.lr, int | float) and not isinstance(self.lr, bool)
            if not (number and np.isfinite(self.lr) and self.lr > 0):
                shown = f"{self.lr:g}" if number else repr(self.lr)
                raise OptionError(f"--lr must be a positive number (got {shown})")
        if self.threshold is not None and self.fpr is not None:
            raise OptionError("--threshold and --fpr are mutually exclusive; give one of them")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise OptionError(f"--threshold must be between 0 and 1 (got {self.threshold:g})")
        if self.fpr is not None:
            check_fpr_range(self.fpr)
        if self.memory_features not in MEMORY_FEATURES:
            known = ", ".join(MEMORY_FEATURES)
            raise OptionError(
                f"--memory-features must be one of {known} (got {self.memory_features!r})"
            )
        if self.arch not in ARCHITECTURES and self.arch != AUTO:
            known = ", ".join([*sorted(ARCHITECTURES), AUTO])
            raise OptionError(f"--arch must be one of {known} (got {self.arch!r})")
        if self.arch != AUTO:  # auto's parameters are checked once the data chose it
            resolve_params(self.arch, self.arch_params)

    @property
    def shape(self) -> ImageShape:
        return ImageShape(self.width, self.height)

    @property
    def memory(self) -> MemorySettings:
        return MemorySettings(
            codes=self.memory_size, k=self.memory_k, seed=self.seed, features=self.memory_features
        )


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    report_path: Path | None
    graph: ScoringGraph  # what the model file holds, in torch (memory bank included)
    trained: Trained  # losses per epoch, held-out losses, the epoch kept
    metadata: ModelMetadata  # exactly what the model file carries
    calibration: Calibration
    settings: FitSettings  # as trained: --batch-size auto and --lr auto resolved
    train_indices: NDArray[np.intp]  # rows of the data file trained on
    holdout_indices: NDArray[np.intp]  # rows held out for --fpr (empty otherwise)
    validation_indices: NDArray[np.intp]  # rows held out for early stopping (empty: none)
    defaults: Choice  # the architecture, parameters and metric trained with; what auto chose
    skipped: tuple[str, ...]  # unreadable image files skipped with --skip-bad, one line each
    # Seconds per stage: read, train, export, calibrate, reference, report.
    timings: Mapping[str, float]

    @property
    def autoencoder(self) -> Autoencoder:
        """The trained network, in eval mode."""
        return self.trained.autoencoder

    @property
    def losses(self) -> tuple[float, ...]:
        """Mean training loss per epoch run."""
        return self.trained.losses

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())


def train_and_export(data: Path, out: Path, options: TrainOptions = TrainOptions()) -> TrainResult:
    """Train on the normal images in `data` and write the scoring graph to `out`."""
    data, out = Path(data), Path(out)
    _prepare_output(out)
    timings: dict[str, float] = {}

    with _timed(timings, "read"):
        normal = _read(data, options)
    log.debug("%s: %d images, training on %d", data, len(normal.images), len(normal.train_rows))
    choice = _choose(options, normal.images.pixels)
    options = dataclasses.replace(options, arch=choice.arch, arch_params=choice.arch_params)

    batch_size = _batch_size(options, len(normal.train_rows))
    lr = auto_lr(batch_size) if options.lr == "auto" else float(options.lr)
    early_stopping = len(normal.validation_rows) > 0
    epochs = auto_epochs(early_stopping) if options.epochs == "auto" else options.epochs
    with _timed(timings, "train"):
        settings = FitSettings(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=options.seed,
            progress=options.progress,
            patience=options.patience,
            lr_drops=LR_DROPS,
        )
        trained = train(
            options.arch,
            options.shape,
            options.arch_params,
            normal.train_pixels,
            settings,
            holdout=normal.images.pixels[normal.validation_rows],
        )
    log.debug("trained %d epochs, kept %d", trained.epochs_run, trained.kept_epoch)

    with _timed(timings, "memory"):
        holdout = normal.holdout_pixels
        graph = scoring_graph(
            trained.autoencoder, options.mode, normal.memory_pixels, holdout, options.memory
        )
    calibration = fixed(options.threshold)
    metadata = ModelMetadata(
        format_version=FORMAT_VERSION,
        width=options.width,
        height=options.height,
        mode=options.mode,
        metric=choice.metric,
        threshold=calibration.threshold,
        training_sha256=normal.sha256,
        pixelwatch_version=service.__version__,
        created_at=datetime.now(UTC),
        final_loss=trained.final_loss,
        arch=options.arch,
        arch_params=_arch_params(options, settings, trained),
        memory=graph.memory_info,
        defaults=choice.metadata(),
    )
    report = None
    try:
        with _staging(out) as staging:
            with _timed(timings, "export"):
                export_scoring_graph(graph, options.shape.size, metadata, staging)
            if options.fpr is not None:
                with _timed(timings, "calibrate"):
                    calibration = calibrate(staging, holdout, options.fpr, choice.metric)
                    metadata = ModelMetadata.model_validate(
                        {**metadata.model_dump(), "threshold": calibration.threshold}
                    )
            with _timed(timings, "reference"):
                metadata = with_reference(
                    staging, metadata, normal.train_pixels, normal.holdout_pixels, options.seed
                )
                write_metadata(staging, metadata)
        log.debug("wrote %s; threshold %s", out, calibration.describe())
        if options.report:
            with _timed(timings, "report"):
                report = _report(out, normal, trained, settings, options)
    except OSError as exc:
        raise OutputError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    return TrainResult(
        model_path=out,
        report_path=report,
        graph=graph,
        trained=trained,
        metadata=metadata,
        calibration=calibration,
        settings=settings,
        train_indices=normal.train_rows,
        holdout_indices=normal.holdout_rows,
        validation_indices=normal.validation_rows,
        defaults=choice,
        skipped=normal.images.skipped,
        timings=timings,
    )


@dataclass(frozen=True)
class _Normal:
    """The normal images, their digest and the train / early-stopping / calibration split."""

    images: ImageSet
    sha256: str
    train_rows: NDArray[np.intp]
    holdout_rows: NDArray[np.intp]  # calibration (--fpr)
    validation_rows: NDArray[np.intp]  # early stopping

    @property
    def train_pixels(self) -> Pixels:
        return self.images.pixels[self.train_rows]

    @property
    def holdout_pixels(self) -> Pixels:
        return self.images.pixels[self.holdout_rows]

    @property
    def memory_pixels(self) -> Pixels:
        # The early-stopping images are normal and take no part in calibration: their codes
        # widen the memory bank. The --fpr hold-out (which then also stops training) stays
        # out of it: the memory map is calibrated on it.
        return self.images.pixels[np.setdiff1d(np.arange(len(self.images)), self.holdout_rows)]


def _prepare_output(out: Path) -> None:
    """Refuse an unusable --out before any training time is spent; create its directory."""
    if out.is_dir():
        raise OutputError(f"--out {out} is a directory; give a file name such as model.onnx")
    # The model is renamed onto --out: a device node or pipe there would be replaced by a
    # file (as root, /dev/full would stop being a device).
    for path in (out, report_path(out)):
        if path.exists() and not path.is_file():
            raise OutputError(
                f"--out {out}: {path} exists and is not a regular file; give a file name "
                "such as model.onnx"
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"cannot write to {out.parent}: permission denied")


def _read(data: Path, options: TrainOptions) -> _Normal:
    images = read_images(data, options.shape, binarize=options.binarize, skip_bad=options.skip_bad)
    digest = _digest(images)
    count = len(images)
    if options.fpr is None:
        train_rows, holdout = np.arange(count), np.arange(0)
    else:
        check_fpr(options.fpr, count, str(data))  # before any training time is spent
        train_rows, holdout = split_holdout(count, options.seed)
    validation = train_rows[:0]
    if options.patience > 0 and count >= EARLY_STOPPING_MIN:
        if options.fpr is None:
            train_rows, validation = validation_split(train_rows, options.seed)
        else:
            # The calibration split stops training too: holding out another tenth cost
            # detection on the digits (see scaling.py), and choosing one epoch by mean
            # loss barely moves a low similarity quantile.
            validation = holdout
    return _Normal(images, digest, train_rows, holdout, validation)


def _choose(options: TrainOptions, pixels: Pixels) -> Choice:
    try:
        return choose(pixels, options.shape, options.arch, options.arch_params, options.metric)
    except ArchitectureError as exc:
        raise OptionError(str(exc)) from None


def _digest(images: ImageSet) -> str:
    """sha256 of the file read; for several files, of their names and digests in order."""
    try:
        if len(images.files) == 1:
            return hashlib.sha256(images.files[0].read_bytes()).hexdigest()
        listing = hashlib.sha256()
        for path in images.files:
            listing.update(
                f"{path.name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode()
            )
        return listing.hexdigest()
    except OSError as exc:
        raise InputError(str(exc.filename), "file", exc.strerror or str(exc)) from None


def _batch_size(options: TrainOptions, training_images: int) -> int:
    if options.batch_size == "auto":
        return auto_batch_size(training_images)
    return options.batch_size


def _arch_params(options: TrainOptions, settings: FitSettings, trained: Trained) -> dict[str, Any]:
    """The architecture's hyper-parameters and the optimiser's, as recorded in the metadata."""
    return {
        **resolve_params(options.arch, options.arch_params),
        "epochs": settings.epochs,  # the most epochs allowed
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "seed": options.seed,
        "patience": options.patience,
        "epochs_run": trained.epochs_run,
        "epoch_kept": trained.kept_epoch,
    }


def _report(
    out: Path, normal: _Normal, trained: Trained, settings: FitSettings, options: TrainOptions
) -> Path:
    """Everything in the report that comes from the model is scored by the exported graph."""
    model = load_model(out)
    fitted = model.score(normal.train_pixels)
    held_out = len(normal.holdout_rows) > 0
    scored = model.score(normal.holdout_pixels) if held_out else fitted
    shown = slice(0, MAX_EXAMPLES)
    data = ReportData(
        losses=trained.losses,
        holdout_losses=trained.holdout_losses,
        kept_epoch=trained.kept_epoch,
        max_epochs=settings.epochs,
        inputs=normal.train_pixels[shown],
        reconstructions=fitted.reconstruction[shown],
        similarities=scored.similarity,
        similarities_of="held-out" if held_out else "training",
        threshold=model.metadata.threshold,
        metric=model.metadata.metric,
        shape=options.shape,
        title=f"{out.name}: {options.arch} autoencoder, {options.mode} mode, seed {options.seed}",
    )
    return write_report(report_path(out), data)


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary path beside `out`, renamed onto it only if everything succeeded."""
    staging = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:8]}.partial.onnx")
    try:
        yield staging
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
