"""A small run of `make bench` end to end: every contender, the latency run and the report."""

import math
from pathlib import Path

import pytest

from benchmarks.bench import (
    CONTENDERS,
    SIZED,
    TOO_SHORT,
    Config,
    Load,
    Throughput,
    bench,
    ensure_model,
    main,
    make_images,
    print_table,
    ratio,
    results_file,
    selected,
    timed,
)
from benchmarks.own_cost import STAGES
from service.scoring.model import load_model

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.timeout(900)  # every contender, four small models trained, on a shared machine
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
        min_seconds=0.0,  # a run this small is timed anyway: the figures are not the point
        sized_messages=((28, 120, 60), (64, 60, 30)),
        sized_epochs=1,
    )
    report = await bench(kafka_bootstrap, cfg)

    expected = {
        "librdkafka", "aiokafka", "faust_agent", "faust_agent_quiet_monitor",
        "faust_agent_no_cython",
        "worker", "worker_exactly_once", "worker_tuned", "worker_x2", "worker_binary",
        "worker_binary_anomalies_only", "worker_binary_grouped",
        "worker_traceparent", "worker_tracing",
        "librdkafka_u8_28x28", "worker_u8_28x28_dense", "worker_u8_28x28_conv",
        "librdkafka_u8_64x64", "worker_u8_64x64_dense", "worker_u8_64x64_conv",
    }  # fmt: skip
    assert set(report["throughput"]) == expected == set(CONTENDERS)
    flagged_8x8 = float(load_model(seed_model_path).score(make_images(400, 0.05)).anomaly.mean())
    for name, row in report["throughput"].items():
        assert row["per_second"] > 0 and math.isfinite(row["per_second"]), name
        # What each contender consumed is part of its row.
        assert row["load"] == "95% normal, 5% noise", name
        side = 8 if name not in SIZED else int(name.split("_")[2].split("x")[0])
        assert row["image_size"] == f"{side}x{side}", name
        assert 0 <= row["anomaly_share"] <= 1, name
        assert row["pixels_per_second"] == pytest.approx(row["images_per_second"] * side * side)
        assert row["mb_per_second"] > 0 and row["note"] == "", name
    assert report["throughput"]["worker"]["anomaly_share"] == pytest.approx(flagged_8x8)
    # Single-image u8 messages: a megabyte is a million pixels; 8x8 JSON takes more bytes.
    for name in SIZED:
        row = report["throughput"][name]
        assert row["mb_per_second"] == pytest.approx(row["pixels_per_second"] / 1e6), name
    worker = report["throughput"]["worker"]
    assert worker["mb_per_second"] > 4 * worker["pixels_per_second"] / 1e6
    for name in ("worker_u8_28x28_dense", "worker_u8_64x64_conv"):
        assert report["throughput"][name]["messages"] == (60 if "28x28" in name else 30), name
    assert report["throughput"]["librdkafka_u8_64x64"]["messages"] == 60
    assert [row["model"] for row in report["cost_by_size"]] == [
        "8x8 dense (course)", "28x28 dense", "28x28 conv", "64x64 dense", "64x64 conv",
    ]  # fmt: skip
    for row in report["cost_by_size"]:
        stages = [row[f"{stage}_us"] for stage in STAGES]
        assert all(cost >= 0 for cost in stages) and row["decode_us"] > 0, row["model"]
        assert row["total_us"] == pytest.approx(sum(stages))
        assert row["dominant"] == STAGES[stages.index(max(stages))]
    assert {
        f"worker_u8_{s}x{s}_{a} MB/s / librdkafka_u8_{s}x{s} MB/s"
        for s in (28, 64)
        for a in ("dense", "conv")
    } <= set(report["ratios"])
    for faust in ("faust_agent", "faust_agent_quiet_monitor", "faust_agent_no_cython"):
        assert report["throughput"][faust]["messages"] == 100, faust
    assert report["throughput"]["worker_binary"]["messages"] == 400  # images, 10 per message
    assert report["throughput"]["worker_binary_grouped"]["messages"] == 400  # from 40 records
    for cost in ("json_us", "json_batch_us", "u8_us", "bits_us", "bits_grouped_us", "baseline_us"):
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
    for name, value in report["ratios"].items():
        assert value > 0 and math.isfinite(value), name
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


async def test_a_run_shorter_than_the_least_time_is_reported_too_short_to_time(
    kafka_bootstrap: str,
    seed_model_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As `make bench` gets it; the workers inherit it and must accept it.
    monkeypatch.setenv("BENCH_ONLY", "librdkafka,worker")
    cfg = Config(
        messages=200,
        partitions=2,
        model=seed_model_path,
        workdir=tmp_path,
        min_seconds=3600.0,
        only=frozenset({"librdkafka", "worker"}),
    )
    report = await bench(kafka_bootstrap, cfg)

    assert set(report["throughput"]) == {"librdkafka", "worker"}  # only what was asked for
    for name, row in report["throughput"].items():
        assert row["per_second"] is None and row["note"] == TOO_SHORT, name
        assert row["mb_per_second"] is None and row["images_per_second"] is None, name
        assert 0 < row["seconds"] < 3600 and row["load"] == "95% normal, 5% noise", name
    assert report["ratios"] == {"worker/librdkafka": None}
    assert report["targets"] == {"worker/librdkafka >= 0.5": None, "peak RSS <= 300 MB": True}
    assert "latency" not in report and "own_cost" not in report
    print_table(report)
    printed = capsys.readouterr().out
    assert f"worker/librdkafka: {TOO_SHORT}" in printed
    assert "worker/librdkafka >= 0.5: not timed" in printed


def test_a_rate_is_given_only_from_the_least_time_on() -> None:
    load = Load("95% normal, 5% noise", "28x28", 784, 0.05, 784.0)
    short = timed("worker", 1000, 0.99, 1.0).describe(load)
    assert (short.per_second, short.mb_per_second, short.note) == (None, None, TOO_SHORT)
    assert short.anomaly_share == 0.05 and short.image_size == "28x28"
    long = timed("worker", 1000, 2.0, 1.0).describe(load)
    assert (long.per_second, long.pixels_per_second) == (500.0, 500.0 * 784)
    assert long.mb_per_second == pytest.approx(500.0 * 784 / 1e6)
    assert ratio(long.per_second, short.per_second) is None
    assert ratio(long.per_second, 250.0) == 2.0
    assert isinstance(long, Throughput)


def test_a_subset_names_known_contenders_and_sections_and_refuses_others() -> None:
    assert selected(None) >= {"worker_u8_64x64_conv", "librdkafka_u8_28x28", "cost_by_size"}
    assert selected(frozenset({"librdkafka_u8_64x64"})) == {"librdkafka_u8_64x64"}
    with pytest.raises(ValueError, match="unknown wroker; choose from librdkafka, aiokafka"):
        selected(frozenset({"worker", "wroker"}))


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


async def test_a_bench_of_the_tracing_contenders_reports_their_ratios_only(
    kafka_bootstrap: str, seed_model_path: Path, tmp_path: Path
) -> None:
    only = frozenset({"worker", "worker_traceparent", "worker_tracing"})
    cfg = Config(
        messages=200, partitions=1, model=seed_model_path, workdir=tmp_path, only=only,
        min_seconds=0.0,
    )  # fmt: skip
    report = await bench(kafka_bootstrap, cfg)
    assert set(report["throughput"]) == only
    assert set(report["ratios"]) == {
        "worker_traceparent/worker",
        "worker_tracing/worker",
        "worker_tracing/worker_traceparent",
    }
    assert set(report["targets"]) == {"worker_traceparent/worker >= 0.95", "peak RSS <= 300 MB"}
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
