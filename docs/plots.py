"""`make plots`: the Benchmarks page's pictures, rendered from the results files the benchmark
targets write (`make bench`, `make chaos`, `make eval-digits`).

Each PNG states the run it shows (date, machine, load average) and the results file it comes
from, in the picture and in the PNG's Description. An absent results file is skipped with one
line naming the target that writes it; a malformed one stops with a one-line error.

    python docs/plots.py [--bench FILE] [--chaos FILE] [--digits FILE] [--out DIR]
"""

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

REPO: Final = Path(__file__).resolve().parents[1]
DEFAULT_OUT: Final = REPO / "docs" / "plots"
SOURCES: Final = {
    "bench": ("bench-results/bench.json", "make bench"),
    "chaos": ("chaos-results/chaos.json", "make chaos"),
    "digits": ("artifacts/eval-digits/results.json", "make eval-digits"),
}
GUARANTEE_COLOURS: Final = {"at_least_once": "#4c72b0", "exactly_once": "#dd8452"}


class ResultsError(Exception):
    """A results file that cannot be plotted; the message says which and why."""


def run_line(report: dict[str, Any], path: Path, target: str) -> str:
    """When, where and under what load the run happened, and where the figures come from."""
    date = report.get("date")
    when = (
        f"run finished {date}"
        if date
        else "results file written "
        + datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
    )
    machine = report.get("machine") or report.get("environment") or {}
    cpus = machine.get("cpus")
    where = f"{cpus} CPUs" if cpus else "machine not recorded"
    if machine.get("platform"):
        where += f", {machine['platform'].split('-with-')[0]}"
    load = machine.get("load_average")
    if load is None and "usage" in report:
        load = report["usage"].get("load_average_after")
    loads = "load average " + (" / ".join(f"{x:.1f}" for x in load) if load else "not recorded")
    try:
        name = str(path.resolve().relative_to(REPO))
    except ValueError:
        name = path.name
    return f"{when}; {where}; {loads}; from {name} ({target})"


def finish(fig: Figure, caption: str, out: Path, right: float = 1.0) -> Path:
    # About 17 characters of 7-point text per inch of figure.
    lines = textwrap.wrap(caption, width=int(fig.get_figwidth() * 17))
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, color="#555555", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.13 * len(lines) / fig.get_figheight(), right, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Description": caption, "Software": "pixelwatch"})
    plt.close(fig)
    return out


def throughput(report: dict[str, Any], caption: str, out_dir: Path) -> list[Path]:
    rows = sorted(report["throughput"].items(), key=lambda kv: kv[1]["per_second"])
    names = [name for name, _ in rows]
    rates = [float(row["per_second"]) for _, row in rows]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.4))
    colours = ["#dd8452" if n.startswith("worker") else "#8c8c8c" for n in names]
    ax.barh(names, rates, color=colours)
    for y, rate in enumerate(rates):
        ax.text(rate, y, f" {rate:,.0f}", va="center", fontsize=8)
    ax.set_xlabel("outputs per second (binary contenders: images per second)")
    config = report["config"]
    title = f"Throughput by contender\n({int(config['messages']):,} messages"
    if "faust_messages" in config:
        title += f"; faust contenders {int(config['faust_messages']):,}"
    ax.set_title(title + ")")
    ax.set_xlim(0, max(rates) * 1.18)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    return [finish(fig, caption, out_dir / "throughput.png")]


def latency(report: dict[str, Any], caption: str, out_dir: Path) -> list[Path]:
    lat = report["latency"]
    trade = report.get("commit_interval_trade_off") or {}
    fig, axes = plt.subplots(1, 2 if trade else 1, figsize=(9, 3.8), squeeze=False)
    ax = axes[0][0]
    labels = ["p50", "p99", "max"]
    values = [float(lat[f"{k}_ms"]) for k in labels]
    ax.bar(labels, values, color=["#4c72b0", "#dd8452", "#c44e52"])
    for x, v in enumerate(values):
        ax.text(x, v, f"{v:.0f} ms", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("end-to-end latency, ms")
    ax.set_title(f"At {float(lat['rate_per_second']):,.0f} images/s (half the worker's rate)")
    if trade:
        ax = axes[0][1]
        width = 0.2
        for g, (guarantee, by_interval) in enumerate(trade.items()):
            intervals = list(by_interval)
            for p, percentile in enumerate(("p50", "p99")):
                xs = [i + (2 * g + p - 1.5) * width for i in range(len(intervals))]
                ys = [float(by_interval[i][f"{percentile}_ms"]) for i in intervals]
                ax.bar(
                    xs,
                    ys,
                    width,
                    color=GUARANTEE_COLOURS.get(guarantee, "#8c8c8c"),
                    alpha=0.55 if percentile == "p50" else 1.0,
                    label=f"{guarantee} {percentile}",
                )
            ax.set_xticks(range(len(intervals)), [f"{i} s" for i in intervals])
        ax.set_yscale("log")
        ax.set_xlabel("PIXELWATCH_COMMIT_INTERVAL")
        ax.set_ylabel("latency to a read_committed reader, ms")
        ax.set_title("By guarantee and commit interval")
        ax.legend(fontsize=7)
    return [finish(fig, caption, out_dir / "latency.png")]


def chaos(report: dict[str, Any], caption: str, out_dir: Path) -> list[Path]:
    results = report["results"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    guarantees = list(dict.fromkeys(r["guarantee"] for r in results))
    by = {(r["scenario"], r["guarantee"]): r for r in results}
    lost = sum(int(r["lost"]) for r in results)
    fig, (dup_ax, fail_ax) = plt.subplots(1, 2, figsize=(11, 0.45 * len(scenarios) + 1.8))
    height = 0.8 / max(len(guarantees), 1)
    for g, guarantee in enumerate(guarantees):
        colour = GUARANTEE_COLOURS.get(guarantee, "#8c8c8c")
        ys = [i + (g - (len(guarantees) - 1) / 2) * height for i in range(len(scenarios))]
        dups = [by[(s, guarantee)]["duplicates"] if (s, guarantee) in by else 0 for s in scenarios]
        dup_ax.barh(ys, dups, height, color=colour, label=guarantee)
        for y, d, s in zip(ys, dups, scenarios, strict=True):
            if (s, guarantee) in by:
                dup_ax.text(d, y, f" {d:,}", va="center", fontsize=7)
        for y, s in zip(ys, scenarios, strict=True):
            failovers = by.get((s, guarantee), {}).get("failover_s") or []
            fail_ax.scatter(
                failovers,
                [y] * len(failovers),
                color=colour,
                s=18,
                label=guarantee if y == ys[0] else None,
            )
    for ax in (dup_ax, fail_ax):
        ax.set_yticks(range(len(scenarios)), scenarios if ax is dup_ax else [""] * len(scenarios))
        ax.invert_yaxis()
    dup_ax.set_xlabel("duplicates")
    dup_ax.set_title(f"Duplicates by scenario ({lost:,} lost in all)")
    dup_ax.legend(fontsize=7, loc="lower right")
    fail_ax.set_xlabel("failover, s (one point per fault)")
    fail_ax.set_title("Failover by scenario")
    fail_ax.set_xlim(left=0)
    fail_ax.legend(fontsize=7, loc="lower right")
    fail_ax.grid(axis="x", alpha=0.3)
    return [finish(fig, caption, out_dir / "chaos.png")]


def digits(report: dict[str, Any], caption: str, out_dir: Path) -> list[Path]:
    written = []
    rows = report["table"]
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        mine = [r for r in rows if r["protocol"] == protocol]
        modes = list(dict.fromkeys(m for r in mine for m in r["cells"]))
        learned = [r for r in mine if r["metric"] != "-"]
        baselines = [r for r in mine if r["metric"] == "-"]
        methods = list(dict.fromkeys(r["method"] for r in learned))
        metrics = list(dict.fromkeys(r["metric"] for r in learned))
        fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes) + 2.4, 4.4), squeeze=False)
        width = 0.8 / max(len(metrics), 1)
        cmap = plt.get_cmap("tab10")
        for ax, mode in zip(axes[0], modes, strict=True):
            for k, metric in enumerate(metrics):
                cells = {
                    r["method"]: r["cells"][mode]
                    for r in learned
                    if r["metric"] == metric and mode in r["cells"]
                }
                xs = [i + (k - (len(metrics) - 1) / 2) * width for i in range(len(methods))]
                ys = [cells[m]["auroc"] if m in cells else float("nan") for m in methods]
                ax.bar(xs, ys, width, color=cmap(k % 10), label=metric)
            for b, row in enumerate(baselines):
                if mode in row["cells"]:
                    ax.axhline(
                        row["cells"][mode]["auroc"],
                        color=("#000000", "#777777")[b % 2],
                        linestyle=("--", ":", "-.")[b // 2 % 3],
                        linewidth=0.9,
                        label=f"{row['method']} (baseline)",
                    )
            ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
            ax.set_title(f"{protocol}, {mode}")
            every = [r["cells"][mode]["auroc"] for r in mine if mode in r["cells"]]
            ax.set_ylim(max(0.0, min(every) - 0.02), min(1.0, max(every) + 0.01))
        axes[0][0].set_ylabel("mean AUROC")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="center right")
        fig.suptitle(f"AUROC by architecture and metric on digits: {protocol}{setup(report)}")
        written.append(finish(fig, caption, out_dir / f"auroc-{protocol}.png", right=0.8))
    return written


def setup(report: dict[str, Any]) -> str:
    """What the digits run covered, when the file says (a small run is not the full table)."""
    protocol = report.get("protocol")
    if not protocol:
        return ""
    runs = protocol["repetitions"]
    return (
        f" (digits {','.join(map(str, protocol['classes']))}; {runs} repetition"
        f"{'s' if runs != 1 else ''}; {protocol['epochs']} epochs)"
    )


PLOTTERS: Final[dict[str, list[Callable[[dict[str, Any], str, Path], list[Path]]]]] = {
    "bench": [throughput, latency],
    "chaos": [chaos],
    "digits": [digits],
}


def render(kind: str, path: Path, out_dir: Path) -> list[Path]:
    """The plots of one results file; ResultsError when it cannot be read or lacks a field."""
    target = SOURCES[kind][1]
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: not a readable JSON results file ({exc})") from None
    try:
        caption = run_line(report, path, target)
        return [p for plot in PLOTTERS[kind] for p in plot(report, caption, out_dir)]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ResultsError(
            f"{path}: not the shape {target} writes ({type(exc).__name__}: {exc})"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    for kind, (default, target) in SOURCES.items():
        parser.add_argument(f"--{kind}", type=Path, default=REPO / default, help=f"by {target}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    written: list[Path] = []
    for kind, (_, target) in SOURCES.items():
        path: Path = getattr(args, kind)
        if not path.is_file():
            print(f"skipped {path}: not found ({target} writes it)", file=sys.stderr)
            continue
        try:
            written += render(kind, path, args.out)
        except ResultsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
