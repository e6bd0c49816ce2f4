"""The benchmark's tables: mean AUROC per method and metric, per protocol, and the targets."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from rich.table import Table

from model_export.digits.baselines import BASELINES
from model_export.digits.protocol import (
    BASELINE_METRIC,
    BENCH_METRICS,
    DEFAULTS_METHOD,
    BenchMode,
    Protocol,
    ProtocolName,
    Run,
)
from model_export.memory import DEFAULT_CODES
from service.scoring.similarity import RECONSTRUCTION_METRICS

PRECISION: Final = 4  # decimals compared when deciding "beats" / "matches"
# Scoring the test images, per image: the baselines' scorers and the architectures' graphs
# in torch run in the benchmark's process, the defaults' model file through onnxruntime.
SCORE_COLUMN: Final = "score µs/image"
# The names the "beats" columns and the targets use for the baselines.
SHORT: Final[dict[str, str]] = {
    **{name: name for name in BASELINES if name.startswith("PCA")},
    "IsolationForest": "IF",
    "kNN (k=1)": "kNN-1",
    "kNN (k=5)": "kNN-5",
}
TITLES: Final[dict[ProtocolName, str]] = {
    "one-class": "one-class: one digit normal, the nine others anomalous",
    "leave-one-out": "leave-one-out: nine digits normal, the held-out digit anomalous",
}


def title(kind: ProtocolName, protocol: Protocol) -> str:
    """The protocol's title with the training settings its rows share."""
    code = protocol.params_for(kind).get("code")
    sizes = f"code size {code}" if code else "default sizes"
    epochs = protocol.epochs_for(kind)
    images = f", {protocol.size}x{protocol.size} images" if protocol.size != 8 else ""
    codes = protocol.memory_size
    bank = f", memory bank of {codes}" if codes != DEFAULT_CODES else ""
    return f"{TITLES[kind]} ({sizes}, {epochs} epoch{'s' if epochs != 1 else ''}{images}{bank})"


@dataclass(frozen=True)
class TargetSpec:
    """A protocol's targets: every architecture's reconstruction score beats `pca` and
    IsolationForest, and the best score of all matches or beats the best of `knn`, in
    `modes` (all of the protocol's modes when empty)."""

    pca: str
    knn: tuple[str, ...]
    modes: tuple[BenchMode, ...] = ()


TARGETS: Final[dict[ProtocolName, TargetSpec]] = {
    # As the one-class table always had them: PCA at the default code size, the better kNN.
    "one-class": TargetSpec(pca="PCA-8", knn=("kNN-1", "kNN-5")),
    # The reference figures of the harder protocol: PCA-16 and kNN-5, on gray images.
    "leave-one-out": TargetSpec(pca="PCA-16", knn=("kNN-5",), modes=("gray",)),
}


@dataclass(frozen=True)
class Cell:
    """Mean AUROC over classes and repetitions, and the spread of the repetition means."""

    auroc: float
    spread: float
    average_precision: float
    per_class: dict[int, float]

    def __str__(self) -> str:
        return f"{self.auroc:.{PRECISION}f} ± {self.spread:.{PRECISION}f}"


@dataclass(frozen=True)
class Row:
    protocol: ProtocolName
    method: str
    metric: str
    cells: dict[BenchMode, Cell]
    seconds: float  # mean fitting time per run
    beats: dict[BenchMode, list[str]] = field(default_factory=dict)
    score_us: float | None = None  # mean scoring time per test image, in microseconds

    @property
    def baseline(self) -> bool:
        return self.metric == BASELINE_METRIC

    @property
    def reconstruction(self) -> bool:
        return self.metric in RECONSTRUCTION_METRICS

    @property
    def defaults(self) -> bool:
        return self.method == DEFAULTS_METHOD


def summarise(runs: Sequence[Run], protocol: Protocol) -> list[Row]:
    """Per protocol: baseline rows first, then one row per architecture and metric."""
    rows = []
    for kind in protocol.protocols:
        rows += _summarise(kind, [r for r in runs if r.protocol == kind], protocol)
    return rows


def _summarise(kind: ProtocolName, runs: Sequence[Run], protocol: Protocol) -> list[Row]:
    keys = [(name, BASELINE_METRIC) for name in BASELINES]
    # The defaults row scores by the model's own metric, which the data chose.
    keys += [(DEFAULTS_METHOD, m) for m in sorted({r.metric for r in runs if r.defaults})]
    keys += [(arch, metric) for arch in protocol.archs for metric in BENCH_METRICS]
    rows = []
    for method, metric in keys:
        mine = [r for r in runs if r.method == method and r.metric == metric]
        cells = {mode: _cell([r for r in mine if r.mode == mode]) for mode in protocol.modes}
        timed = [r.score_us for r in mine if r.score_us is not None]
        score_us = float(np.mean(timed)) if timed else None
        seconds = float(np.mean([r.seconds for r in mine]))
        rows.append(Row(kind, method, metric, cells, seconds, score_us=score_us))
    yardsticks = {mode: _yardsticks(rows, mode) for mode in protocol.modes}
    return [
        Row(
            row.protocol,
            row.method,
            row.metric,
            row.cells,
            row.seconds,
            {} if row.baseline else {m: _beaten(row, m, yardsticks[m]) for m in protocol.modes},
            row.score_us,
        )
        for row in rows
    ]


def _cell(runs: Sequence[Run]) -> Cell:
    repetitions = sorted({r.repetition for r in runs})
    means = [np.mean([r.auroc for r in runs if r.repetition == k]) for k in repetitions]
    classes = sorted({r.digit for r in runs})
    return Cell(
        auroc=float(np.mean([r.auroc for r in runs])),
        spread=float(np.std(means, ddof=1)) if len(means) > 1 else 0.0,
        average_precision=float(np.mean([r.average_precision for r in runs])),
        per_class={c: float(np.mean([r.auroc for r in runs if r.digit == c])) for c in classes},
    )


def _rounded(value: float) -> float:
    return round(value, PRECISION)


def _yardsticks(rows: Sequence[Row], mode: BenchMode) -> dict[str, float]:
    """Every baseline's mean AUROC by its short name, rounded to the table's precision."""
    return {SHORT[row.method]: _rounded(row.cells[mode].auroc) for row in rows if row.baseline}


def _beaten(row: Row, mode: BenchMode, yardsticks: dict[str, float]) -> list[str]:
    """The baselines this row exceeds, and `=name` for a kNN it ties with."""
    mine = _rounded(row.cells[mode].auroc)
    beaten = [name for name, value in yardsticks.items() if mine > value]
    beaten += [f"={name}" for name, value in yardsticks.items() if "kNN" in name and mine == value]
    return beaten


@dataclass(frozen=True)
class Verdict:
    """The targets, checked on the table's numbers."""

    lines: list[str]
    met: bool


def targets(rows: Sequence[Row], protocol: Protocol) -> dict[ProtocolName, Verdict]:
    return {kind: _targets(kind, rows, protocol) for kind in protocol.protocols}


def _targets(kind: ProtocolName, all_rows: Sequence[Row], protocol: Protocol) -> Verdict:
    """Each architecture, by its best reconstruction metric, beats the protocol's PCA and
    IsolationForest; the best row of all (any metric) matches or beats its kNN."""
    spec = TARGETS[kind]
    rows = [r for r in all_rows if r.protocol == kind]
    modes = [m for m in protocol.modes if not spec.modes or m in spec.modes]
    lines, met = [], True
    for arch in protocol.archs:
        parts = []
        for mode in modes:
            mine = [r for r in rows if r.method == arch and r.reconstruction]
            best = max(mine, key=lambda r: r.cells[mode].auroc)
            ok = {spec.pca, "IF"} <= set(best.beats[mode])
            met &= ok
            parts.append(f"{mode} {'yes' if ok else 'NO'} ({best.metric} {best.cells[mode]})")
        lines.append(f"{arch} beats {spec.pca} and IsolationForest: {'; '.join(parts)}")
    for mode in modes:
        knn = max(
            (r for r in rows if r.baseline and SHORT[r.method] in spec.knn),
            key=lambda r: r.cells[mode].auroc,
        )
        name = SHORT[knn.method]
        best = max((r for r in rows if not r.baseline), key=lambda r: r.cells[mode].auroc)
        # The defaults, alone, are judged against the same kNN as the best of all.
        judged = [("best", best), *(("defaults", r) for r in rows if r.defaults)]
        for what, row in judged:
            ok = name in row.beats[mode] or f"={name}" in row.beats[mode]
            met &= ok
            lines.append(
                f"{what} in {mode} mode: {row.method}/{row.metric} {row.cells[mode]}, "
                f"{'matches or beats' if ok else 'falls short of'} {name} ({knn.cells[mode]})"
            )
    return Verdict(lines, met)


def _score_text(row: Row) -> str:
    return "-" if row.score_us is None else f"{row.score_us:.1f}"


def _beats_text(row: Row, mode: BenchMode) -> str:
    if row.baseline:
        return ""
    return ", ".join(row.beats[mode]) or "none"


def markdown(rows: Sequence[Row], protocol: Protocol, verdicts: dict[ProtocolName, Verdict]) -> str:
    """One section per protocol: its table, then its targets."""
    sections = []
    for kind in protocol.protocols:
        sections.append(_markdown(kind, [r for r in rows if r.protocol == kind], protocol))
        sections[-1] += "".join(f"- {line}\n" for line in verdicts[kind].lines)
    return "\n".join(sections)


def _markdown(kind: ProtocolName, rows: Sequence[Row], protocol: Protocol) -> str:
    modes = protocol.modes
    head = ["method", "metric", *(f"{m} AUROC" for m in modes), "fit s/run", SCORE_COLUMN]
    head += [f"{m}: beats" for m in modes]
    lines = [f"## {title(kind, protocol)}", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for row in rows:
        name = f"*{row.method}*" if row.baseline else row.method
        cells = [name, row.metric, *(str(row.cells[m]) for m in modes), f"{row.seconds:.2f}"]
        cells += [_score_text(row)]
        cells += [_beats_text(row, m) for m in modes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n"


def rich_tables(rows: Sequence[Row], protocol: Protocol) -> list[Table]:
    return [
        _rich_table(kind, [r for r in rows if r.protocol == kind], protocol)
        for kind in protocol.protocols
    ]


def _rich_table(kind: ProtocolName, rows: Sequence[Row], protocol: Protocol) -> Table:
    table = Table(title=f"{title(kind, protocol)}: AUROC, mean ± sd of the repetitions")
    columns = ("method", "metric", *(f"{m} AUROC" for m in protocol.modes), "fit s/run")
    for column in (*columns, SCORE_COLUMN):
        table.add_column(column, justify="left" if column in {"method", "metric"} else "right")
    for mode in protocol.modes:
        table.add_column(f"{mode}: beats")
    for row in rows:
        style = "dim" if row.baseline else None
        table.add_row(
            row.method,
            row.metric,
            *(str(row.cells[m]) for m in protocol.modes),
            f"{row.seconds:.2f}",
            _score_text(row),
            *(_beats_text(row, m) for m in protocol.modes),
            style=style,
        )
    return table
