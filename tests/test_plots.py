"""`make plots` (docs/plots.py) renders the Benchmarks page's pictures from results files of
the shape `make bench`, `make chaos` and `make eval-digits` write; each picture states its
run's date, machine and load and the file it comes from."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from PIL import Image

from model_export.digits.command import main as digits_main

REPO: Final = Path(__file__).resolve().parents[1]
PLOTS: Final = REPO / "docs" / "plots.py"
MACHINE: Final = {
    "platform": "Linux-6.1-x86_64-with-glibc2.36",
    "cpus": 2,
    "load_average": [1.5, 1.25, 1.0],
}


def bench_report() -> dict[str, Any]:
    row = {"messages": 2000, "peak_rss_mb": 200.0}
    return {
        "date": "2026-12-07T19:00:00+00:00",
        "machine": MACHINE,
        "config": {"messages": "2000"},
        "throughput": {
            "librdkafka": {**row, "per_second": 30000.0},
            "faust_agent": {**row, "per_second": 1200.0},
            "worker": {**row, "per_second": 9000.0},
        },
        "latency": {"rate_per_second": 4500.0, "p50_ms": 18.0, "p99_ms": 58.0, "max_ms": 81.0},
        "commit_interval_trade_off": {
            g: {
                i: {"per_second": 9000.0, "p50_ms": 20.0 * n, "p99_ms": 60.0 * n}
                for n, i in enumerate(("0.2", "1", "5"), 1)
            }
            for g in ("at_least_once", "exactly_once")
        },
    }


def chaos_report() -> dict[str, Any]:
    def result(
        scenario: str, guarantee: str, duplicates: int, failover: list[float]
    ) -> dict[str, Any]:
        return {
            "scenario": scenario,
            "guarantee": guarantee,
            "sent": 100,
            "found": 100,
            "lost": 0,
            "duplicates": duplicates,
            "failover_s": failover,
            "notes": [],
            "problems": [],
        }

    return {
        "machine": MACHINE,
        "kafka": "4.1.1",
        "results": [
            result("kill -9 a worker (x3)", "at_least_once", 338, [10.0, 9.9, 11.0]),
            result("poison set", "at_least_once", 0, []),
            result("kill -9 a worker (x3)", "exactly_once", 0, [42.2, 44.0, 43.8]),
        ],
    }


def cell(auroc: float) -> dict[str, Any]:
    return {"auroc": auroc, "spread": 0.001, "average_precision": auroc, "per_class": {}}


def digits_report() -> dict[str, Any]:
    def row(method: str, metric: str, gray: float, binary: float) -> dict[str, Any]:
        return {
            "protocol": "one-class",
            "method": method,
            "metric": metric,
            "seconds": 0.1,
            "cells": {"gray": cell(gray), "binary": cell(binary)},
            "beats": {},
        }

    return {
        "environment": {"python": "3.11", "cpus": 2},
        "usage": {"load_average_after": [2.0, 1.5, 1.0]},
        "table": [
            row("kNN (k=5)", "-", 0.996, 0.984),
            row("dense", "hamming", 0.995, 0.976),
            row("dense", "memory", 0.997, 0.980),
            row("conv", "hamming", 0.995, 0.971),
            row("conv", "memory", 0.998, 0.985),
        ],
    }


def run(tmp_path: Path, **files: Any) -> subprocess.CompletedProcess[str]:
    args = []
    for kind in ("bench", "chaos", "digits"):
        path = tmp_path / f"{kind}.json"
        if kind in files:
            content = files[kind]
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        args += [f"--{kind}", str(path)]
    return subprocess.run(
        [sys.executable, str(PLOTS), *args, "--out", str(tmp_path / "plots")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_each_results_file_becomes_plots_that_state_their_run(tmp_path: Path) -> None:
    result = run(tmp_path, bench=bench_report(), chaos=chaos_report(), digits=digits_report())
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["auroc-one-class.png", "chaos.png", "latency.png", "throughput.png"]
    for name in names:
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.width >= 500 and image.height >= 200, name
            description = image.info["Description"]
        assert "2 CPUs" in description, (name, description)
    with Image.open(tmp_path / "plots" / "throughput.png") as image:
        caption = image.info["Description"]
    assert caption.startswith("run finished 2026-12-07T19:00:00+00:00")
    assert "load average 1.5 / 1.2 / 1.0" in caption and "bench.json (make bench)" in caption
    with Image.open(tmp_path / "plots" / "auroc-one-class.png") as image:
        caption = image.info["Description"]
    # No date in the file: the file's own time is given, and said to be that.
    assert caption.startswith("results file written ") and "load average 2.0 / 1.5 / 1.0" in caption


def test_an_absent_results_file_is_skipped_naming_the_target_that_writes_it(tmp_path: Path) -> None:
    result = run(tmp_path, chaos=chaos_report())
    assert result.returncode == 0, result.stderr
    assert "bench.json: not found (make bench writes it)" in result.stderr
    assert "digits.json: not found (make eval-digits writes it)" in result.stderr
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["chaos.png"]


def test_a_results_file_of_another_shape_stops_with_one_line(tmp_path: Path) -> None:
    report = bench_report()
    del report["latency"]
    result = run(tmp_path, bench=report)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "bench.json: not the shape make bench writes" in line
    assert "latency" in line
    (tmp_path / "again").mkdir()
    broken = run(tmp_path / "again", chaos="{not json")
    assert (
        broken.returncode == 2 and "chaos.json: not a readable JSON results file" in broken.stderr
    )


def test_the_benchmarks_page_shows_every_committed_plot_and_no_other() -> None:
    page = (REPO / "docs" / "benchmarks.md").read_text()
    shown = sorted(re.findall(r"\]\(plots/([\w-]+\.png)\)", page))
    assert shown, "the Benchmarks page shows no plot"
    assert shown == sorted(p.name for p in (REPO / "docs" / "plots").glob("*.png"))


def test_a_digits_run_plots_with_the_date_and_machine_it_recorded(tmp_path: Path) -> None:
    """A real (tiny) `make eval-digits` run, so the plot follows the shape the code writes."""
    argv = ["--protocol", "leave-one-out", "--archs", "dense", "--modes", "gray"]
    argv += ["--classes", "4", "--repetitions", "1", "--loo-epochs", "1", "--jobs", "1"]
    assert digits_main([*argv, "--out", str(tmp_path / "digits"), "--no-defaults"]) == 0
    absent = str(tmp_path / "none.json")
    command = [sys.executable, str(PLOTS), "--bench", absent, "--chaos", absent]
    command += ["--digits", str(tmp_path / "digits" / "results.json")]
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "plots")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "plots" / "auroc-leave-one-out.png") as image:
        caption = image.info["Description"]
    recorded = json.loads((tmp_path / "digits" / "results.json").read_text())
    assert caption.startswith(f"run finished {recorded['date']}")
    assert recorded["environment"]["platform"].split("-with-")[0] in caption
