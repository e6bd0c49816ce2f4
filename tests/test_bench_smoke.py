"""A small run of `make bench` end to end: every contender, the latency run and the report."""

import math
from pathlib import Path

import pytest

from benchmarks.bench import Config, bench, ensure_model, main, results_file, selected
from service.scoring.model import load_model

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_benchmark_runs_every_contender_and_reports_ratios(
    kafka_bootstrap: str, seed_model_path: Path, candidate_model_path: Path, tmp_path: Path
) -> None:
    cfg = Config(
        messages=400,
        partitions=2,
        faust_messages=100,
        images_per_message=10,
        cost_batches=2,
        memory_sizes=(1, 16),
        latency_seconds=2.0,
        commit_intervals=(0.5,),
        model=seed_model_path,
        workdir=tmp_path,
        candidate=candidate_model_path,
    )
    report = await bench(kafka_bootstrap, cfg)

    expected = {
        "librdkafka", "aiokafka", "faust_agent", "faust_agent_quiet_monitor",
        "faust_agent_no_cython",
        "worker", "worker_exactly_once", "worker_tuned", "worker_x2", "worker_binary",
        "worker_binary_anomalies_only", "worker_binary_grouped",
        "worker_traceparent", "worker_tracing",
    }  # fmt: skip
    assert set(report["throughput"]) == expected
    for name, row in report["throughput"].items():
        assert row["per_second"] > 0 and math.isfinite(row["per_second"]), name
    for faust in ("faust_agent", "faust_agent_quiet_monitor", "faust_agent_no_cython"):
        assert report["throughput"][faust]["messages"] == 100, faust
    assert report["throughput"]["worker_binary"]["messages"] == 400  # images, 10 per message
    assert report["throughput"]["worker_binary_grouped"]["messages"] == 400  # from 40 records
    for cost in ("json_us", "json_batch_us", "u8_us", "bits_us", "baseline_us"):
        assert 0 < report["own_cost"][cost] < 1000, cost
    assert report["shadow_cost"]["ratio"] > 1  # a second model costs something
    sizes = {(p["codes"], p["batch"]) for p in report["memory_bank_cost"]}
    assert sizes == {(c, b) for c in (1, 16) for b in (1, 64, 500)}
    assert report["throughput"]["worker"]["peak_rss_mb"] > 0
    assert report["latency"]["messages"] >= 10
    assert (
        0
        < report["latency"]["p50_ms"]
        <= report["latency"]["p99_ms"]
        <= report["latency"]["max_ms"]
    )
    trade_off = report["commit_interval_trade_off"]
    assert set(trade_off) == {"at_least_once", "exactly_once"}
    for guarantee, rows in trade_off.items():
        assert set(rows) == {"0.5"}, guarantee
        row = rows["0.5"]
        assert row["per_second"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], guarantee
    for name, ratio in report["ratios"].items():
        assert ratio > 0 and math.isfinite(ratio), name
    assert set(report["targets"]) == {
        "worker/librdkafka >= 0.5",
        "worker/faust_agent >= 10",
        "worker_exactly_once/worker >= 0.8",
        "binary images/librdkafka messages >= 2 (scores on)",
        "binary images/librdkafka messages >= 2 (anomalies only)",
        "binary images/librdkafka messages >= 5 (scores grouped)",
        "worker_traceparent/worker >= 0.95",
        "p99 <= window + 25 ms (75 ms)",
        "peak RSS <= 300 MB",
        "own cost <= 6 us per JSON message",
    }


async def test_a_bench_of_some_contenders_runs_and_reports_only_those(
    kafka_bootstrap: str, seed_model_path: Path, tmp_path: Path
) -> None:
    only = frozenset({"worker", "worker_traceparent", "worker_tracing"})
    cfg = Config(messages=200, partitions=1, model=seed_model_path, workdir=tmp_path, only=only)
    report = await bench(kafka_bootstrap, cfg)
    assert set(report["throughput"]) == only
    assert set(report["ratios"]) == {
        "worker_traceparent/worker",
        "worker_tracing/worker",
        "worker_tracing/worker_traceparent",
    }
    assert set(report["targets"]) == {"worker_traceparent/worker >= 0.95", "peak RSS <= 300 MB"}
    assert "latency" not in report and "own_cost" not in report


def test_the_shadow_cost_measurement_reports_both_variants_and_their_ratio(
    seed_model_path: Path, candidate_model_path: Path
) -> None:
    from benchmarks.shadow_cost import shadow_cost

    figures = shadow_cost(seed_model_path, candidate_model_path, batch_size=20, batches=3, rounds=1)
    assert (figures["batch_size"], figures["batches"], figures["rounds"]) == (20, 3, 1)
    for name in ("us_per_image_live", "us_per_image_with_shadow", "ratio",
                 "us_per_image_shadow_onnx_call"):  # fmt: skip
        assert figures[name] > 0 and math.isfinite(figures[name]), name
    assert figures["ratio"] == pytest.approx(
        figures["us_per_image_with_shadow"] / figures["us_per_image_live"]
    )


def test_a_cached_model_this_build_refuses_is_trained_again(tmp_path: Path) -> None:
    stale = tmp_path / "seed.onnx"
    stale.write_bytes(b"a model file from another build")
    ensure_model(stale)
    assert load_model(stale).metadata.threshold == pytest.approx(0.6)


async def test_only_runs_the_named_contenders_and_reports_the_ratios_of_what_ran(
    kafka_bootstrap: str, seed_model_path: Path, tmp_path: Path
) -> None:
    cfg = Config(
        messages=200,
        partitions=2,
        model=seed_model_path,
        workdir=tmp_path,
        only=frozenset({"worker", "worker_exactly_once"}),
    )
    report = await bench(kafka_bootstrap, cfg)
    assert set(report["throughput"]) == {"worker", "worker_exactly_once"}
    assert set(report["ratios"]) == {"worker_exactly_once/worker"}
    assert set(report["targets"]) == {"worker_exactly_once/worker >= 0.8", "peak RSS <= 300 MB"}
    assert "latency" not in report and "own_cost" not in report


def test_the_latency_sections_bring_the_worker_they_are_paced_by() -> None:
    assert selected(frozenset({"commit_interval_trade_off"})) == {
        "commit_interval_trade_off",
        "worker",
    }
    assert selected(frozenset({"aiokafka"})) == {"aiokafka"}


def test_an_unknown_name_for_only_is_refused_with_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--only", "worker,wroker"])
    error = capsys.readouterr().err
    assert "unknown wroker" in error and "worker_exactly_once" in error


def test_bench_only_in_the_environment_picks_the_subset_as_only_does(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_ONLY", "wroker")
    with pytest.raises(SystemExit):
        main([])
    assert "unknown wroker" in capsys.readouterr().err


def test_a_partial_run_writes_its_own_file_and_leaves_the_full_runs_alone() -> None:
    assert results_file(None).name == "bench.json"
    assert results_file(frozenset({"worker"})).name == "bench-only.json"
