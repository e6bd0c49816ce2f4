"""`train_and_export`: read normal images, train, export the graph, calibrate, report.

The order matters: the graph is exported first, the threshold is then calibrated by scoring
held-out images with the runtime's own `load_model(...).score(...)`, written into the graph's
metadata, and only then does the file appear at its final path (an atomic rename).
"""

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
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

import service
from model_export.architectures import ARCHITECTURES, Autoencoder, resolve_params
from model_export.calibrate import (
    Calibration,
    calibrate,
    check_fpr,
    check_fpr_range,
    fixed,
    split_holdout,
)
from model_export.export import ScoringGraph, export_scoring_graph, scoring_graph, write_metadata
from model_export.memory import DEFAULT_CODES, DEFAULT_K, MemorySettings
from model_export.report import MAX_EXAMPLES, ReportData, report_path, write_report
from model_export.train import FitSettings, train
from service.errors import InputError, PixelwatchError
from service.scoring.images import ImageSet, ImageShape, Pixels, read_images
from service.scoring.model import FORMAT_VERSION, Mode, ModelMetadata, load_model
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

    epochs: int = 500
    seed: int = 0
    mode: Mode = "binary"
    metric: MetricName = "hamming"
    threshold: float | None = None
    fpr: float | None = None
    width: int = 8
    height: int = 8
    arch: str = "dense"
    arch_params: Mapping[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    batch_size: int = 1
    progress: bool = False
    report: bool = True
    memory_size: int = DEFAULT_CODES  # latent codes stored at most (a coreset beyond)
    memory_k: int = DEFAULT_K  # memory distance: to the k-th nearest stored code

    def __post_init__(self) -> None:
        for name in ("epochs", "width", "height", "batch_size", "memory_size", "memory_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{_flag(name)} must be a whole number >= 1 (got {value!r})")
        if not 0 <= self.seed < 2**63:
            raise OptionError(f"--seed must be between 0 and 2**63 - 1 (got {self.seed})")
        if self.mode not in MODES:
            raise OptionError(f"--mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.metric not in METRICS:
            raise OptionError(f"--metric must be one of {', '.join(METRICS)} (got {self.metric!r})")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise OptionError(f"--lr must be a positive number (got {self.lr:g})")
        if self.threshold is not None and self.fpr is not None:
            raise OptionError("--threshold and --fpr are mutually exclusive; give one of them")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise OptionError(f"--threshold must be between 0 and 1 (got {self.threshold:g})")
        if self.fpr is not None:
            check_fpr_range(self.fpr)
        if self.arch not in ARCHITECTURES:
            known = ", ".join(sorted(ARCHITECTURES))
            raise OptionError(f"--arch must be one of {known} (got {self.arch!r})")
        resolve_params(self.arch, self.arch_params)

    @property
    def shape(self) -> ImageShape:
        return ImageShape(self.width, self.height)

    @property
    def memory(self) -> MemorySettings:
        return MemorySettings(codes=self.memory_size, k=self.memory_k, seed=self.seed)


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    report_path: Path | None
    autoencoder: Autoencoder  # in eval mode
    graph: ScoringGraph  # what the model file holds, in torch (memory bank included)
    losses: tuple[float, ...]  # mean training loss per epoch
    metadata: ModelMetadata  # exactly what the model file carries
    calibration: Calibration
    train_indices: NDArray[np.intp]  # rows of the data file trained on
    holdout_indices: NDArray[np.intp]  # rows held out for --fpr (empty otherwise)
    timings: Mapping[str, float]  # seconds per stage: read, train, export, calibrate, report

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

    with _timed(timings, "train"):
        settings = FitSettings(
            epochs=options.epochs,
            lr=options.lr,
            batch_size=options.batch_size,
            seed=options.seed,
            progress=options.progress,
        )
        trained = train(
            options.arch, options.shape, options.arch_params, normal.train_pixels, settings
        )
    log.debug("trained %d epochs, final loss %.6g", options.epochs, trained.final_loss)

    with _timed(timings, "memory"):
        holdout = normal.images.pixels[normal.holdout_rows]
        graph = scoring_graph(
            trained.autoencoder, options.mode, normal.train_pixels, holdout, options.memory
        )
    calibration = fixed(options.threshold)
    metadata = ModelMetadata(
        format_version=FORMAT_VERSION,
        width=options.width,
        height=options.height,
        mode=options.mode,
        metric=options.metric,
        threshold=calibration.threshold,
        training_sha256=normal.sha256,
        pixelwatch_version=service.__version__,
        created_at=datetime.now(UTC),
        final_loss=trained.final_loss,
        arch=options.arch,
        arch_params=_arch_params(options),
        memory=graph.memory_info,
    )
    report = None
    try:
        with _staging(out) as staging:
            with _timed(timings, "export"):
                export_scoring_graph(graph, options.shape.size, metadata, staging)
            if options.fpr is not None:
                with _timed(timings, "calibrate"):
                    calibration = calibrate(staging, holdout, options.fpr, options.metric)
                    metadata = ModelMetadata.model_validate(
                        {**metadata.model_dump(), "threshold": calibration.threshold}
                    )
                    write_metadata(staging, metadata)
        log.debug("wrote %s; threshold %s", out, calibration.describe())
        if options.report:
            with _timed(timings, "report"):
                report = _report(out, normal, trained.losses, options)
    except OSError as exc:
        raise OutputError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    return TrainResult(
        model_path=out,
        report_path=report,
        autoencoder=trained.autoencoder,
        graph=graph,
        losses=trained.losses,
        metadata=metadata,
        calibration=calibration,
        train_indices=normal.train_rows,
        holdout_indices=normal.holdout_rows,
        timings=timings,
    )


@dataclass(frozen=True)
class _Normal:
    """The normal images, their file's digest and the train / held-out split."""

    images: ImageSet
    sha256: str
    train_rows: NDArray[np.intp]
    holdout_rows: NDArray[np.intp]

    @property
    def train_pixels(self) -> Pixels:
        return self.images.pixels[self.train_rows]


def _prepare_output(out: Path) -> None:
    """Refuse an unusable --out before any training time is spent; create its directory."""
    if out.is_dir():
        raise OutputError(f"--out {out} is a directory; give a file name such as model.onnx")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"cannot write to {out.parent}: permission denied")


def _read(data: Path, options: TrainOptions) -> _Normal:
    images = read_images(data, options.shape)
    try:
        digest = hashlib.sha256(data.read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(str(data), "file", exc.strerror or str(exc)) from None
    if options.fpr is None:
        return _Normal(images, digest, np.arange(len(images)), np.arange(0))
    check_fpr(options.fpr, len(images), str(data))  # before any training time is spent
    return _Normal(images, digest, *split_holdout(len(images), options.seed))


def _arch_params(options: TrainOptions) -> dict[str, Any]:
    """The architecture's hyper-parameters and the optimiser's, as recorded in the metadata."""
    return {
        **resolve_params(options.arch, options.arch_params),
        "epochs": options.epochs,
        "lr": options.lr,
        "batch_size": options.batch_size,
        "seed": options.seed,
    }


def _report(out: Path, normal: _Normal, losses: tuple[float, ...], options: TrainOptions) -> Path:
    """Everything in the report that comes from the model is scored by the exported graph."""
    model = load_model(out)
    trained = model.score(normal.train_pixels)
    held_out = len(normal.holdout_rows) > 0
    scored = model.score(normal.images.pixels[normal.holdout_rows]) if held_out else trained
    shown = slice(0, MAX_EXAMPLES)
    data = ReportData(
        losses=losses,
        inputs=normal.train_pixels[shown],
        reconstructions=trained.reconstruction[shown],
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
