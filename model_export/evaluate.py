"""`pixelwatch evaluate`: detection quality of an exported model on labelled images.

Images come as two sources (`--normal`, `--anomalous`: X/. text, .csv, .npy, PNG/JPEG files,
a folder of them or a glob pattern) or as one labelled CSV (`--labelled`): a header row naming
a `label` column (0 normal, 1 anomalous) and one column per pixel, in any order; every data
row is one image.

The model scores them with the runtime's own `load_model(...).score(...)`. An image is an
anomaly when its similarity is below the threshold, so the anomaly score is the negated
similarity: AUROC and average precision rank by it (anomalous is the positive class), and
the false-positive rate, recall, precision and F1 are those of the model's threshold.

The by-metric ranking leaves out metrics that are monotone functions of another (Dice of
Ruzicka: D = 2R / (1 + R)): they rank images identically, so their AUROC is not news. The
summary says so beside the metric they follow.

>>> import numpy as np
>>> q = quality(np.array([0.9, 0.8, 0.7, 0.4]), np.array([0, 0, 1, 1]), threshold=0.75)
>>> (q.auroc, q.fpr, q.recall, q.precision, q.f1)
(1.0, 0.0, 1.0, 1.0, 1.0)
"""

import argparse
import csv
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from matplotlib.figure import Figure  # an Agg figure without pyplot's global state
from numpy.typing import NDArray
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from service.cli.inputs import add_input_options, report_skipped
from service.errors import InputError, PixelwatchError
from service.progress import progress_bar
from service.scoring.images import ImageShape, Pixels, check_values, is_number, read_images
from service.scoring.model import Model, ScoredBatch, load_model
from service.scoring.similarity import EQUIVALENT, METRICS, RANKED_METRICS, MetricName

LABEL_COLUMN: Final = "label"
NORMAL, ANOMALOUS = 0, 1
CHUNK: Final = 4096  # images per onnxruntime call, so progress can advance
Labels = NDArray[np.int8]


class EvaluationError(PixelwatchError):
    """The images given cannot be evaluated (for example only one class is present)."""


@dataclass(frozen=True)
class Quality:
    """How well one similarity separates the classes, and what its threshold does."""

    auroc: float
    average_precision: float
    threshold: float
    fpr: float  # normal images flagged, of all normal images
    recall: float  # anomalous images flagged, of all anomalous images
    precision: float | None  # anomalous, of all flagged; None when nothing is flagged
    f1: float  # 0 when nothing anomalous is flagged
    tp: int
    fp: int
    tn: int
    fn: int


def quality(similarity: NDArray[np.floating], labels: Labels, threshold: float) -> Quality:
    """Score the similarities of labelled images (1 = anomalous) with scikit-learn."""
    score = -np.asarray(similarity, dtype=np.float64)  # low similarity = anomalous
    flagged = (np.asarray(similarity) < threshold).astype(np.int8)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, flagged, labels=[0, 1]).ravel())
    return Quality(
        auroc=float(roc_auc_score(labels, score)),
        average_precision=float(average_precision_score(labels, score)),
        threshold=threshold,
        fpr=fp / (fp + tn),
        recall=tp / (tp + fn),
        precision=tp / (tp + fp) if tp + fp else None,
        f1=float(f1_score(labels, flagged, zero_division=0.0)),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


@dataclass(frozen=True)
class Evaluation:
    model: Model
    metric: MetricName
    labels: Labels
    similarities: dict[MetricName, NDArray[np.float32]]
    quality: Quality  # of `metric` at the threshold
    ranking: dict[MetricName, Quality]  # every metric with a ranking of its own (not EQUIVALENT)

    @property
    def normal(self) -> int:
        return int((self.labels == NORMAL).sum())

    @property
    def anomalous(self) -> int:
        return int((self.labels == ANOMALOUS).sum())


def evaluate(
    model: Model,
    pixels: Pixels,
    labels: Labels,
    *,
    metric: MetricName | None = None,
    threshold: float | None = None,
    advance: Callable[[int], None] = lambda scored: None,
) -> Evaluation:
    """Score labelled images with `model` and measure every metric's separation.

    `advance(n)` is called after every chunk of n images scored (for a progress bar).
    """
    for label, name in ((NORMAL, "normal"), (ANOMALOUS, "anomalous")):
        if not (labels == label).any():
            raise EvaluationError(
                f"no {name} images (label {label}): evaluation needs both normal and anomalous"
            )
    scored = _score_in_chunks(model, pixels, metric, threshold, advance)
    ranking = {m: quality(scored.scores[m], labels, scored.threshold) for m in RANKED_METRICS}
    chosen = ranking.get(scored.metric) or quality(
        scored.scores[scored.metric], labels, scored.threshold
    )
    return Evaluation(model, scored.metric, labels, scored.scores, chosen, ranking)


def _score_in_chunks(
    model: Model,
    pixels: Pixels,
    metric: MetricName | None,
    threshold: float | None,
    advance: Callable[[int], None],
) -> ScoredBatch:
    parts = []
    for start in range(0, len(pixels), CHUNK):
        part = model.score(pixels[start : start + CHUNK], metric=metric, threshold=threshold)
        parts.append(part)
        advance(len(part.reconstruction))
    first = parts[0]
    return ScoredBatch(
        reconstruction=np.concatenate([p.reconstruction for p in parts]),
        scores={m: np.concatenate([p.scores[m] for p in parts]) for m in first.scores},
        metric=first.metric,
        threshold=first.threshold,
    )


def read_labelled(path: Path | str, shape: ImageShape) -> tuple[Pixels, Labels]:
    """A CSV with a header row: a `label` column (0 or 1) and `shape.size` pixel columns."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise InputError(source, "file", "no such file")
    images: list[Pixels] = []
    labels: list[int] = []
    header: list[str] | None = None
    label_at = -1
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                cells = [c.strip() for c in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                where = f"row {number}"
                if header is None:
                    header, label_at = cells, _header(cells, shape, source, where)
                    continue
                if len(cells) != len(header):
                    raise InputError(
                        source, where, f"{len(cells)} columns, the header has {len(header)}"
                    )
                label = cells[label_at]
                if label not in {"0", "1"}:
                    raise InputError(
                        source, where, f"label {label!r} must be 0 (normal) or 1 (anomalous)"
                    )
                values = cells[:label_at] + cells[label_at + 1 :]
                try:
                    pixels = np.asarray([float(c) for c in values], dtype=np.float32)
                except ValueError:
                    bad = next(c for c in values if not is_number(c))
                    raise InputError(source, where, f"{bad!r} is not a number") from None
                images.append(check_values(pixels, shape, source, where))
                labels.append(int(label))
    except UnicodeDecodeError as exc:
        raise InputError(source, f"byte {exc.start}", "not UTF-8 text") from None
    if not images:
        raise InputError(source, "file", "contains no labelled images")
    return np.stack(images), np.asarray(labels, dtype=np.int8)


def _header(cells: list[str], shape: ImageShape, source: str, where: str) -> int:
    names = [c.lower() for c in cells]
    if names.count(LABEL_COLUMN) != 1:
        raise InputError(source, where, f"the header must name exactly one {LABEL_COLUMN!r} column")
    pixels = len(cells) - 1
    if pixels != shape.size:
        raise InputError(
            source, where, f"{pixels} pixel columns, the model takes {shape.size} ({shape})"
        )
    return names.index(LABEL_COLUMN)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="MODEL.onnx",
        help="scoring graph from `pixelwatch train`",
    )
    images = parser.add_argument_group(
        "images", "either --normal and --anomalous, or one --labelled CSV"
    )
    images.add_argument(
        "--normal",
        metavar="PATH",
        help="normal images: X/. text, .csv, .npy, PNG/JPEG, a folder of them or a quoted glob",
    )
    images.add_argument("--anomalous", metavar="PATH", help="anomalous images (the same forms)")
    images.add_argument(
        "--labelled",
        type=Path,
        metavar="PATH",
        help="CSV with a header: a 'label' column (0 normal, 1 anomalous) and pixel columns",
    )
    parser.add_argument(
        "--metric", choices=METRICS, help="similarity to judge by (default: the model's)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="anomaly if similarity < T (default: the model's)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--report", type=Path, metavar="DIR", help="write the ROC / histogram PNG and JSON here"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_input_options(parser)


def run(args: argparse.Namespace) -> int:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise EvaluationError(f"--threshold {args.threshold:g} is outside [0, 1]")
    pairs = args.normal is not None or args.anomalous is not None
    if pairs == (args.labelled is not None) or (
        pairs and (args.normal is None or args.anomalous is None)
    ):
        raise EvaluationError("give --normal and --anomalous, or --labelled (not both)")
    model = load_model(args.model)
    with progress_bar(*PROGRESS_COLUMNS, enabled=not args.no_progress) as bar:
        if args.labelled is not None:
            pixels, labels = read_labelled(args.labelled, model.shape)
            if args.binarize is not None:
                pixels = (pixels >= args.binarize).astype(np.float32)
        else:
            found = [
                read_images(path, model.shape, binarize=args.binarize, skip_bad=args.skip_bad)
                for path in (args.normal, args.anomalous)
            ]
            for images in found:
                report_skipped(images.skipped, sys.stderr)
            normal, anomalous = (images.pixels for images in found)
            pixels = np.concatenate([normal, anomalous])
            labels = np.repeat(
                np.asarray([NORMAL, ANOMALOUS], dtype=np.int8), [len(normal), len(anomalous)]
            )
        scoring = bar.add_task("scoring", total=len(pixels))
        result = evaluate(
            model,
            pixels,
            labels,
            metric=args.metric,
            threshold=args.threshold,
            advance=lambda n: bar.advance(scoring, n),
        )
    report = _write_report(args.report, result) if args.report is not None else None
    if args.json:
        print(json.dumps(as_json(result, report)))
    else:
        print(summary(result, report))
    return 0


PROGRESS_COLUMNS: Final = (
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TextColumn("images"),
    TimeElapsedColumn(),
    TextColumn("ETA"),
    TimeRemainingColumn(),
)


def as_json(result: Evaluation, report: Path | None = None) -> dict[str, Any]:
    meta = result.model.metadata
    return {
        "model": str(result.model.path),
        "arch": meta.arch,
        "mode": meta.mode,
        "metric": result.metric,
        "normal": result.normal,
        "anomalous": result.anomalous,
        **asdict(result.quality),
        "metrics": {
            m: {"auroc": q.auroc, "average_precision": q.average_precision}
            for m, q in result.ranking.items()
        },
        "same_ranking_as": dict(EQUIVALENT),
        "report": None if report is None else str(report),
    }


def summary(result: Evaluation, report: Path | None = None) -> str:
    q, meta = result.quality, result.model.metadata
    precision = "n/a (nothing flagged)" if q.precision is None else f"{q.precision:.4f}"
    ranking = ", ".join(f"{m} {r.auroc:.4f}{_followers(m)}" for m, r in result.ranking.items())
    lines = [
        f"evaluated {result.model.path} ({meta.arch}, {meta.mode} mode) on "
        f"{result.normal} normal and {result.anomalous} anomalous images",
        f"metric     {result.metric}: anomaly if similarity < {q.threshold:.4g}",
        f"AUROC      {q.auroc:.4f}",
        f"AP         {q.average_precision:.4f} (average precision, anomalous = positive)",
        f"FPR        {q.fpr:.4f} ({q.fp} of {q.fp + q.tn} normal images flagged)",
        f"recall     {q.recall:.4f} ({q.tp} of {q.tp + q.fn} anomalous images flagged)",
        f"precision  {precision}",
        f"F1         {q.f1:.4f}",
        f"by metric  AUROC {ranking}",
        f"report     {report or '-'}",
    ]
    return "\n".join(lines)


def _followers(metric: MetricName) -> str:
    """' (= dice)' after ruzicka: the metrics that rank exactly as this one."""
    same = [m for m, leader in EQUIVALENT.items() if leader == metric]
    return f" (= {', '.join(same)})" if same else ""


def _write_report(directory: Path, result: Evaluation) -> Path:
    stem = result.model.path.stem
    png = directory / f"{stem}.evaluation.png"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # matplotlib narrates its font search at DEBUG level (thousands of lines under -v).
        font_log = logging.getLogger("matplotlib.font_manager")
        level = font_log.level
        font_log.setLevel(logging.INFO)
        try:
            draw_report(result).savefig(png, dpi=80)
        finally:
            font_log.setLevel(level)
        data = json.dumps(as_json(result, png), indent=2) + "\n"
        (directory / f"{stem}.evaluation.json").write_text(data, encoding="utf-8")
    except OSError as exc:
        target = exc.filename or directory
        raise EvaluationError(f"cannot write the report to {target}: {exc.strerror}") from None
    return png


def draw_report(result: Evaluation) -> Figure:
    """ROC curve with the threshold's operating point; both similarity distributions."""
    q, similarity = result.quality, result.similarities[result.metric]
    figure = Figure(figsize=(11.0, 4.5), layout="constrained")
    figure.suptitle(
        f"{result.model.path.name}: {result.metric}, {result.normal} normal / "
        f"{result.anomalous} anomalous images"
    )
    roc, histogram = figure.subplots(1, 2)
    fpr, tpr, _ = roc_curve(result.labels, -similarity.astype(np.float64))
    roc.plot(fpr, tpr, label=f"AUROC {q.auroc:.4f}")
    roc.plot([0, 1], [0, 1], color="grey", linewidth=0.5, linestyle=":")
    roc.plot([q.fpr], [q.recall], "o", color="red", label=f"threshold {q.threshold:.4g}")
    roc.set(title="ROC curve", xlabel="false-positive rate", ylabel="recall (true-positive rate)")
    roc.legend(loc="lower right")

    low = min(float(similarity.min()), q.threshold)
    bins = np.linspace(max(0.0, low - 0.02), 1.0, 41)
    if math.isclose(bins[0], bins[-1]):
        bins = np.linspace(0.0, 1.0, 41)
    for label, name, colour in (
        (NORMAL, "normal", "tab:blue"),
        (ANOMALOUS, "anomalous", "tab:orange"),
    ):
        values = similarity[result.labels == label]
        share = np.full(len(values), 1.0 / len(values))  # classes of any size side by side
        histogram.hist(
            values,
            bins=bins,
            weights=share,
            alpha=0.6,
            color=colour,
            label=f"{name} ({len(values)})",
        )
    histogram.axvline(q.threshold, color="red", linestyle="--", label="threshold")
    histogram.set(
        title=f"{result.metric} similarity",
        xlabel=f"{result.metric} (anomaly if < {q.threshold:.4g})",
        ylabel="share of the class's images",
    )
    histogram.legend(loc="upper left")
    return figure
