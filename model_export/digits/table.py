"""The benchmark's table: mean AUROC per method and metric, and the issue's targets."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from rich.table import Table

from model_export.digits.baselines import BASELINES
from model_export.digits.protocol import BASELINE_METRIC, BenchMode, Protocol, Run
from service.scoring.similarity import METRICS

PRECISION: Final = 4  # decimals compared when deciding "beats" / "matches"


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
    method: str
    metric: str
    cells: dict[BenchMode, Cell]
    seconds: float  # mean fitting time per run
    beats: dict[BenchMode, list[str]] = field(default_factory=dict)

    @property
    def baseline(self) -> bool:
        return self.metric == BASELINE_METRIC


def summarise(runs: Sequence[Run], protocol: Protocol) -> list[Row]:
    """Baseline rows first, then one row per architecture and metric, in registry order."""
    keys = [(name, BASELINE_METRIC) for name in BASELINES]
    keys += [(arch, metric) for arch in protocol.archs for metric in METRICS]
    rows = []
    for method, metric in keys:
        mine = [r for r in runs if r.method == method and r.metric == metric]
        cells = {mode: _cell([r for r in mine if r.mode == mode]) for mode in protocol.modes}
        rows.append(Row(method, metric, cells, float(np.mean([r.seconds for r in mine]))))
    yardsticks = {mode: _yardsticks(rows, mode) for mode in protocol.modes}
    return [
        Row(
            row.method,
            row.metric,
            row.cells,
            row.seconds,
            {} if row.baseline else {m: _beaten(row, m, yardsticks[m]) for m in protocol.modes},
        )
        for row in rows
    ]


def _cell(runs: Sequence[Run]) -> Cell:
    repetitions = sorted({r.repetition for r in runs})
    means = [np.mean([r.auroc for r in runs if r.repetition == k]) for k in repetitions]
    classes = sorted({r.normal_class for r in runs})
    return Cell(
        auroc=float(np.mean([r.auroc for r in runs])),
        spread=float(np.std(means, ddof=1)) if len(means) > 1 else 0.0,
        average_precision=float(np.mean([r.average_precision for r in runs])),
        per_class={
            c: float(np.mean([r.auroc for r in runs if r.normal_class == c])) for c in classes
        },
    )


def _rounded(value: float) -> float:
    return round(value, PRECISION)


def _yardsticks(rows: Sequence[Row], mode: BenchMode) -> dict[str, float]:
    """PCA, IF and the better kNN, rounded to the table's precision."""
    auroc = {row.method: row.cells[mode].auroc for row in rows if row.baseline}
    knn = max(v for k, v in auroc.items() if k.startswith("kNN"))
    return {
        "PCA": _rounded(auroc["PCA"]),
        "IF": _rounded(auroc["IsolationForest"]),
        "kNN": _rounded(knn),
    }


def _beaten(row: Row, mode: BenchMode, yardsticks: dict[str, float]) -> list[str]:
    mine = _rounded(row.cells[mode].auroc)
    beaten = [name for name, value in yardsticks.items() if mine > value]
    if mine == yardsticks["kNN"]:
        beaten.append("=kNN")
    return beaten


@dataclass(frozen=True)
class Verdict:
    """The issue's targets, checked on the table's numbers."""

    lines: list[str]
    met: bool


def targets(rows: Sequence[Row], protocol: Protocol) -> Verdict:
    """Every architecture beats PCA and IF (by its best metric, in every mode); the best
    architecture matches or beats the better kNN."""
    lines, met = [], True
    for arch in protocol.archs:
        parts = []
        for mode in protocol.modes:
            best = max((r for r in rows if r.method == arch), key=lambda r: r.cells[mode].auroc)
            ok = {"PCA", "IF"} <= set(best.beats[mode])
            met &= ok
            parts.append(f"{mode} {'yes' if ok else 'NO'} ({best.metric} {best.cells[mode]})")
        lines.append(f"{arch} beats PCA and IsolationForest: {'; '.join(parts)}")
    for mode in protocol.modes:
        best = max((r for r in rows if not r.baseline), key=lambda r: r.cells[mode].auroc)
        ok = "kNN" in best.beats[mode] or "=kNN" in best.beats[mode]
        met &= ok
        lines.append(
            f"best in {mode} mode: {best.method}/{best.metric} {best.cells[mode]}, "
            f"{'matches or beats' if ok else 'falls short of'} kNN"
        )
    return Verdict(lines, met)


def _beats_text(row: Row, mode: BenchMode) -> str:
    if row.baseline:
        return ""
    return ", ".join(row.beats[mode]) or "none"


def markdown(rows: Sequence[Row], protocol: Protocol, verdict: Verdict) -> str:
    modes = protocol.modes
    head = ["method", "metric", *(f"{m} AUROC" for m in modes), "fit s/run"]
    head += [f"{m}: beats" for m in modes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        name = f"*{row.method}*" if row.baseline else row.method
        cells = [name, row.metric, *(str(row.cells[m]) for m in modes), f"{row.seconds:.2f}"]
        cells += [_beats_text(row, m) for m in modes]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {line}" for line in verdict.lines)]
    return "\n".join(lines) + "\n"


def rich_table(rows: Sequence[Row], protocol: Protocol) -> Table:
    table = Table(title="one-class AUROC on scikit-learn digits (mean ± sd over repetitions)")
    for column in ("method", "metric", *(f"{m} AUROC" for m in protocol.modes), "fit s/run"):
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
            *(_beats_text(row, m) for m in protocol.modes),
            style=style,
        )
    return table
