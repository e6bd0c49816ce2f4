"""The benchmark's protocols: the digits, the splits of each protocol, and every run on them.

- one-class: one digit is normal; 70% of its images train, the other 30% and every image of
  the nine other digits are the test images (the nine are the anomalies).
- leave-one-out: nine digits are normal; 70% of their images train, the other 30% and
  every image of the held-out digit are the test images (the held-out digit is the
  anomaly). A broad normal class and a narrow novelty: the harder, realistic case.

`--size N` scores the same digits upscaled from 8x8 to NxN (bilinear, `upscale`), so the
protocols can be run on images as large as MNIST's 28x28 without a download.
"""

import dataclasses
import functools
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Final, Literal, get_args

import numpy as np
import torch
from numpy.typing import NDArray
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score, roc_auc_score

from model_export.architectures import ARCHITECTURES
from model_export.digits.baselines import BASELINES
from model_export.export import scoring_graph
from model_export.memory import DEFAULT_CODES, MemorySettings
from model_export.train import FitSettings, one_thread, train
from service.errors import PixelwatchError
from service.progress import progress_bar
from service.scoring.images import ImageShape, Pixels
from service.scoring.model import MemoryFeatures, Mode, load_model
from service.scoring.similarity import METRICS, RANKED_METRICS, MetricName

SHAPE: Final = ImageShape(8, 8)  # scikit-learn's digits, as bundled
MAX_SIZE: Final = 64
# Images and model mode: gray and binary as the issue defines them; binary-as-gray feeds the
# thresholded images to a gray-mode model (continuous similarities), an optional extra.
BenchMode = Literal["gray", "binary", "binary-as-gray"]
ALL_MODES: Final[tuple[BenchMode, ...]] = get_args(BenchMode)
MODES: Final[tuple[BenchMode, ...]] = ("gray", "binary")
BINARY_CUT: Final = 0.5
BASELINE_METRIC: Final = "-"  # baselines have their own score, not a similarity
DEFAULTS_METHOD: Final = "defaults"  # `pixelwatch train --data D --mode M`, nothing else
ProtocolName = Literal["one-class", "leave-one-out"]
PROTOCOLS: Final[tuple[ProtocolName, ...]] = get_args(ProtocolName)
# Dice ranks images exactly as Ruzicka does (D = 2R / (1 + R)): the same AUROC, so no row.
BENCH_METRICS: Final[tuple[MetricName, ...]] = RANKED_METRICS


class ProtocolError(PixelwatchError):
    """A benchmark setting is out of range."""


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """Everything that determines the benchmark's numbers."""

    protocols: tuple[ProtocolName, ...] = PROTOCOLS
    archs: tuple[str, ...] = tuple(ARCHITECTURES)
    modes: tuple[BenchMode, ...] = MODES
    classes: tuple[int, ...] = tuple(range(10))
    repetitions: int = 3
    train_fraction: float = 0.7
    epochs: int = 300  # one-class: about 125 training images
    loo_epochs: int = 45  # leave-one-out: about 1130 training images, nine times the steps
    loo_code: int = 32  # leave-one-out code size for every architecture (0: their defaults)
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    defaults: bool = True  # a "defaults" row: `pixelwatch train --data ... --mode ...` alone
    size: int = SHAPE.width  # images upscaled to size x size (8: the digits as they are)
    memory_size: int = DEFAULT_CODES  # codes the scoring graph stores at most (train's default)
    memory_features: MemoryFeatures = "code"  # what the bank stores (train's default)

    def __post_init__(self) -> None:
        if not self.protocols or set(self.protocols) - set(PROTOCOLS):
            raise ProtocolError(f"--protocol must be one of {', '.join(PROTOCOLS)} or both")
        unknown = sorted(set(self.archs) - set(ARCHITECTURES))
        if unknown or not (self.archs or self.defaults):
            known = ", ".join(ARCHITECTURES)
            raise ProtocolError(f"--archs: unknown {', '.join(unknown) or '(none)'} ({known})")
        if not self.modes or set(self.modes) - set(ALL_MODES):
            raise ProtocolError(f"--modes must be some of {', '.join(ALL_MODES)}")
        if not self.classes or not set(self.classes) <= set(range(10)):
            raise ProtocolError("--classes must be digits 0 to 9")
        for name in ("repetitions", "epochs", "loo_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ProtocolError(f"--{name.replace('_', '-')} must be >= 1")
        if self.loo_code < 0:
            raise ProtocolError("--loo-code must be >= 0 (0: each architecture's default)")
        if self.repetitions > 100:
            raise ProtocolError("--repetitions must be at most 100")
        if not 0.0 < self.train_fraction < 1.0:
            raise ProtocolError("--train-fraction must be between 0 and 1, exclusive")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ProtocolError("--lr must be a positive number")
        if not 0 <= self.seed < 1000:
            raise ProtocolError("--seed must be between 0 and 999")
        if self.memory_size < 1:
            raise ProtocolError("--memory-size must be >= 1")
        if not SHAPE.width <= self.size <= MAX_SIZE:
            raise ProtocolError(f"--size must be between {SHAPE.width} and {MAX_SIZE}")

    @property
    def shape(self) -> ImageShape:
        return ImageShape(self.size, self.size)

    def epochs_for(self, protocol: ProtocolName) -> int:
        return self.epochs if protocol == "one-class" else self.loo_epochs

    def params_for(self, protocol: ProtocolName) -> dict[str, int]:
        """Architecture parameters: the defaults, but for leave-one-out's code size."""
        return {"code": self.loo_code} if protocol == "leave-one-out" and self.loo_code else {}


@functools.cache
def digits() -> tuple[Pixels, NDArray[np.int_]]:
    """All 1797 images as float32 [N, 64] in [0, 1], and their digit."""
    bunch = load_digits()
    pixels = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, SHAPE.size)
    return pixels, np.asarray(bunch.target)


@functools.cache
def upscale(size: int) -> Pixels:
    """The gray digits at size x size, float32 [N, size * size] in [0, 1].

    Bilinear (torch's `interpolate`, half-pixel centres, no antialiasing), so a stroke keeps
    its gray edges as in a scanned image; 8 returns the digits as they are.
    """
    pixels, _ = digits()
    if size == SHAPE.width:
        return pixels
    square = torch.from_numpy(pixels.reshape(-1, 1, SHAPE.height, SHAPE.width))
    bigger = torch.nn.functional.interpolate(
        square, size=(size, size), mode="bilinear", align_corners=False
    )
    return np.ascontiguousarray(bigger.clamp(0.0, 1.0).reshape(-1, size * size).numpy())


def images(mode: BenchMode, size: int = SHAPE.width) -> Pixels:
    """The images of a mode at a size: binary ones are the gray ones thresholded at 0.5."""
    pixels = upscale(size)
    return pixels if mode == "gray" else (pixels >= BINARY_CUT).astype(np.float32)


def model_mode(mode: BenchMode) -> Mode:
    """The scoring graph's mode: binary only for `binary`."""
    return "binary" if mode == "binary" else "gray"


@dataclass(frozen=True)
class Split:
    """One run's images: `train` (normal) and `test` rows; `labels` 1 = anomalous.

    `digit` is the normal digit (one-class) or the held-out, anomalous one (leave-one-out).
    """

    protocol: ProtocolName
    digit: int
    repetition: int
    seed: int
    train: NDArray[np.intp]
    test: NDArray[np.intp]
    labels: NDArray[np.int8]


def make_split(protocol: Protocol, digit: int, repetition: int, kind: ProtocolName) -> Split:
    _, target = digits()
    one_class = kind == "one-class"
    normal_rows = np.flatnonzero((target == digit) if one_class else (target != digit))
    # One-class keeps the seeds it always had; leave-one-out draws from its own stream.
    stream = [protocol.seed, repetition, digit] + ([] if one_class else [1])
    normal = np.random.default_rng(stream).permutation(normal_rows)
    cut = int(len(normal) * protocol.train_fraction)
    anomalous = np.setdiff1d(np.arange(len(target)), normal_rows)
    test = np.concatenate([np.sort(normal[cut:]), anomalous])
    labels = np.isin(test, anomalous).astype(np.int8)
    seed = 10 * (1000 * protocol.seed + repetition) + digit  # also trains and seeds IF
    return Split(kind, digit, repetition, seed, np.sort(normal[:cut]), test, labels)


def splits(protocol: Protocol) -> list[Split]:
    return [
        make_split(protocol, c, r, kind)
        for kind in protocol.protocols
        for r in range(protocol.repetitions)
        for c in protocol.classes
    ]


@dataclass(frozen=True)
class Run:
    """One method's result on one split in one mode."""

    protocol: ProtocolName
    method: str  # an architecture or a baseline
    metric: str  # a similarity metric, or "-" for a baseline
    mode: BenchMode
    digit: int  # the normal digit (one-class) or the held-out one (leave-one-out)
    repetition: int
    auroc: float
    average_precision: float
    seconds: float  # fitting time (shared by an architecture's metrics); defaults: the command's
    cpu_seconds: float | None = None  # defaults: the command's CPU time (the machine is shared)
    # Scoring the test images, in microseconds per image: a baseline's scorer; an
    # architecture's scoring graph in torch; the defaults' model file through onnxruntime.
    score_us: float | None = None

    @property
    def defaults(self) -> bool:
        return self.method == DEFAULTS_METHOD


def _measure(
    method: str,
    metric: str,
    mode: BenchMode,
    split: Split,
    score: NDArray[Any],
    seconds: float,
    score_seconds: float | None = None,
) -> Run:
    per_image = None if score_seconds is None else 1e6 * score_seconds / len(split.test)
    return Run(
        split.protocol,
        method,
        metric,
        mode,
        split.digit,
        split.repetition,
        float(roc_auc_score(split.labels, score)),
        float(average_precision_score(split.labels, score)),
        seconds,
        score_us=per_image,
    )


def run_baselines(mode: BenchMode, split: Split, size: int = SHAPE.width) -> list[Run]:
    data = images(mode, size)
    runs = []
    for name, baseline in BASELINES.items():
        start = time.perf_counter()
        scorer = baseline(data[split.train], split.seed)
        fitted = time.perf_counter()
        score = scorer(data[split.test])
        scored = time.perf_counter() - fitted
        runs.append(_measure(name, BASELINE_METRIC, mode, split, score, fitted - start, scored))
    return runs


@dataclass(frozen=True)
class BaselineTask:
    """Every baseline on one split in one mode."""

    mode: BenchMode
    split: Split
    size: int = SHAPE.width


@dataclass(frozen=True)
class Task:
    arch: str
    mode: BenchMode
    split: Split
    settings: FitSettings
    params: dict[str, int]
    size: int = SHAPE.width
    memory_size: int = DEFAULT_CODES
    memory_features: MemoryFeatures = "code"


def run_autoencoder(task: Task) -> list[Run]:
    """Train one architecture on one split and score every metric (torch, one thread).

    The scoring graph is the one `train` exports (memory bank of the training codes,
    calibrated leave-one-out, as `train` does without --fpr), run in torch.
    """
    data = images(task.mode, task.size)
    train_pixels = data[task.split.train]
    # One intra-op thread: results do not depend on --jobs, and processes do not compete.
    with one_thread():
        start = time.perf_counter()
        shape = ImageShape(task.size, task.size)
        trained = train(task.arch, shape, task.params, train_pixels, task.settings)
        elapsed = time.perf_counter() - start
        memory = MemorySettings(codes=task.memory_size, features=task.memory_features)
        graph = scoring_graph(
            trained.autoencoder, model_mode(task.mode), train_pixels, settings=memory
        )
        with torch.no_grad():
            scoring = time.perf_counter()
            _, *similarities = graph(torch.from_numpy(data[task.split.test]))
            scored = time.perf_counter() - scoring
    scores = dict(zip(METRICS, similarities, strict=True))
    return [
        _measure(
            task.arch,
            m,
            task.mode,
            task.split,
            -scores[m].numpy().astype(np.float64),
            elapsed,
            scored,
        )
        for m in BENCH_METRICS
    ]


@dataclass(frozen=True)
class DefaultsTask:
    """`pixelwatch train` with no flags but the data and --mode, on one split in one mode."""

    mode: BenchMode
    split: Split
    size: int = SHAPE.width


def run_defaults(task: DefaultsTask) -> list[Run]:
    """Run the real command in its own process, timed from start to exit, and score the test
    images with the model it wrote (onnxruntime, as the worker scores). One row: the
    model's own metric, the one the worker flags by."""
    data = images(task.mode, task.size)
    with tempfile.TemporaryDirectory(prefix="pixelwatch-defaults-") as scratch:
        folder = Path(scratch)
        train_file, model = folder / "train.npy", folder / "model.onnx"
        np.save(train_file, data[task.split.train].reshape(-1, task.size, task.size))
        command = [sys.executable, "-m", "service.cli", "train", "--data", str(train_file)]
        command += ["--out", str(model), "--mode", model_mode(task.mode), "--no-progress"]
        if task.size != SHAPE.width:  # the size is the one thing the command cannot guess
            command += ["--width", str(task.size), "--height", str(task.size)]
        before, start = _children_cpu(), time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        elapsed, cpu = time.perf_counter() - start, _children_cpu() - before
        if done.returncode:
            raise ProtocolError(f"pixelwatch train failed: {done.stderr.strip()[-500:]}")
        loaded = load_model(model)  # one onnxruntime thread, as the worker scores
        scoring = time.perf_counter()
        scored = loaded.score(data[task.split.test])
        scoring = time.perf_counter() - scoring
    metric = scored.metric
    score = -scored.similarity.astype(np.float64)
    run = _measure(DEFAULTS_METHOD, metric, task.mode, task.split, score, elapsed, scoring)
    return [dataclasses.replace(run, cpu_seconds=cpu)]


def _children_cpu() -> float:
    """CPU seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_task(task: Task | BaselineTask | DefaultsTask) -> list[Run]:
    if isinstance(task, BaselineTask):
        return run_baselines(task.mode, task.split, task.size)
    if isinstance(task, DefaultsTask):
        return run_defaults(task)
    return run_autoencoder(task)


def run_protocol(protocol: Protocol, *, jobs: int = 1, progress: bool = False) -> list[Run]:
    """Every baseline and architecture on every split and mode; independent of `jobs`."""
    chosen = splits(protocol)
    runs: list[Run] = []
    settings = FitSettings(epochs=protocol.epochs, lr=protocol.lr, batch_size=protocol.batch_size)
    tasks = [
        Task(
            arch,
            mode,
            s,
            _seeded(settings, s.seed, protocol.epochs_for(s.protocol)),
            protocol.params_for(s.protocol),
            protocol.size,
            protocol.memory_size,
            protocol.memory_features,
        )
        for arch in protocol.archs
        for mode in protocol.modes
        for s in chosen
    ]
    # The longest first and the baselines (a second or less each) last, so that the
    # processes finish together; the tables do not depend on the order.
    tasks.sort(key=lambda t: t.settings.epochs * len(t.split.train), reverse=True)
    everything: list[Task | BaselineTask | DefaultsTask] = []
    if protocol.defaults:  # the longest runs: whole commands with early stopping
        size = protocol.size
        everything += [DefaultsTask(mode, s, size) for mode in protocol.modes for s in chosen]
    everything += tasks
    everything += [BaselineTask(mode, s, protocol.size) for mode in protocol.modes for s in chosen]
    with _progress(len(everything), progress) as advance:
        if jobs == 1:
            results: Iterable[list[Run]] = map(run_task, everything)
            for result in results:
                runs.extend(result)
                advance()
        else:
            spawn = get_context("spawn")  # torch and fork do not mix
            with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
                for result in pool.map(run_task, everything):
                    runs.extend(result)
                    advance()
    return runs


def _seeded(settings: FitSettings, seed: int, epochs: int) -> FitSettings:
    return dataclasses.replace(settings, seed=seed, epochs=epochs)


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    bar = progress_bar(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        enabled=enabled,
    )
    with bar:
        task = bar.add_task("training", total=total)
        yield lambda: bar.advance(task)
