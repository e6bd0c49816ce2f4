"""The pixelwatch Grafana dashboard, built with Grafana's foundation SDK.

    python deploy/grafana/dashboard.py          # rewrites dashboards/pixelwatch.json
    python deploy/grafana/dashboard.py --check  # exit 1 if the committed JSON is stale

Edit this file, not the JSON: a test fails when the two disagree, and the observability
end-to-end test evaluates every query below against a real Prometheus.
"""

import json
import sys
from pathlib import Path
from typing import Final

from grafana_foundation_sdk.builders import (
    common,
    dashboard,
    heatmap,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT: Final = Path(__file__).parent / "dashboards" / "pixelwatch.json"
UID: Final = "pixelwatch"
DATASOURCE: Final = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

ANOMALY_SHARE_ALERT: Final = 0.2
"""The share PixelwatchAnomalyRateHigh fires above (deploy/prometheus/alerts.yml)."""
DRIFT_ALERT: Final = 0.2
"""The KS distance PixelwatchSimilarityDrift fires above (deploy/prometheus/alerts.yml)."""

# `$__rate_interval` is at least four scrape intervals, so rate() always has two samples.
RATE: Final = "$__rate_interval"
# Every query selects the job and namespace picked at the top of the dashboard, so workers of
# another deployment (another namespace, another scrape job) never mix in. A target without a
# namespace label (Docker Compose) matches the default, All (.*).
SELECTOR: Final = 'job=~"$job", namespace=~"$namespace"'


def series(name: str, matchers: str = "") -> str:
    """`name{job, namespace and matchers}`: a metric of the selected workers."""
    return f"{name}{{{SELECTOR}{', ' + matchers if matchers else ''}}}"


Target = prometheus.Dataquery
Panel = timeseries.Panel | stat.Panel | table.Panel | heatmap.Panel


def query(expr: str, legend: str = "__auto", ref: str = "A") -> Target:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def quantiles(histogram: str, *, by: str = "") -> list[Target]:
    """p50 and p99 of a Prometheus histogram, summed over workers."""
    labels = f"le{', ' + by if by else ''}"
    return [
        query(
            f"histogram_quantile({q}, sum by ({labels}) "
            f"(rate({series(histogram + '_bucket')}[{RATE}])))",
            legend=f"p{round(q * 100)}",
            ref=ref,
        )
        for q, ref in ((0.5, "A"), (0.99, "B"))
    ]


def graph(title: str, description: str, targets: list[Target], unit: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(targets))
        .unit(unit)
        .fill_opacity(10)
        .legend(
            common.VizLegendOptions()
            .show_legend(True)
            .display_mode(common_model.LegendDisplayMode.LIST)
            .placement(common_model.LegendPlacement.BOTTOM)
        )
        .tooltip(common.VizTooltipOptions().mode(common_model.TooltipDisplayMode.MULTI))
        .height(8)
        .span(8)
    )


def throughput() -> timeseries.Panel:
    return (
        graph(
            "Images per second by outcome",
            "Scored images (normal, anomaly) and invalid ones sent to the dead-letter topic.",
            [
                query(
                    f"sum by (outcome) (rate({series('pixelwatch_images_total')}[{RATE}]))",
                    "{{outcome}}",
                )
            ],
            "short",
        )
        .stacking(common.StackingConfig().mode(common_model.StackingMode.NORMAL))
        .span(12)
    )


def anomaly_rate() -> timeseries.Panel:
    anomalies = series("pixelwatch_images_total", 'outcome="anomaly"')
    scored = series("pixelwatch_images_total", 'outcome=~"normal|anomaly"')
    share = f"sum(rate({anomalies}[{RATE}])) / sum(rate({scored}[{RATE}]))"
    return (
        graph(
            "Anomaly rate",
            "Share of scored images flagged anomalous. The dashed line is the alert threshold.",
            [query(share, "anomalous")],
            "percentunit",
        )
        .min(0)
        .thresholds(
            dashboard.ThresholdsConfig()
            .mode(model.ThresholdsMode.ABSOLUTE)
            .steps(
                [
                    model.Threshold(value=None, color="green"),
                    model.Threshold(value=ANOMALY_SHARE_ALERT, color="red"),
                ]
            )
        )
        .thresholds_style(
            common.GraphThresholdsStyleConfig().mode(common_model.GraphThresholdsStyleMode.DASHED)
        )
        .span(6)
    )


def single(title: str, description: str, target: Target, unit: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(target)
        .unit(unit)
        .graph_mode(common_model.BigValueGraphMode.AREA)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        .height(8)
        .span(3)
    )


def workers() -> stat.Panel:
    return single(
        "Workers",
        "Workers whose /metrics Prometheus scrapes successfully.",
        query(f"count({series('pixelwatch_model_info')})", "workers"),
        "none",
    )


def threshold() -> stat.Panel:
    return single(
        "Anomaly threshold",
        "A similarity strictly below this is an anomaly (the model's, or PIXELWATCH_THRESHOLD).",
        query(f"max({series('pixelwatch_threshold')})", "threshold"),
        "none",
    ).decimals(3)


def similarity_heatmap() -> heatmap.Panel:
    return (
        heatmap.Panel()
        .title("Similarity distribution (anomaly below ${threshold})")
        .description(
            "Images per similarity bucket over time; rows below the threshold in the title "
            "are anomalies. The next panel draws the threshold against the quantiles."
        )
        .datasource(DATASOURCE)
        .with_target(
            query(
                f"sum by (le) (increase({series('pixelwatch_similarity_bucket')}[{RATE}]))",
                "{{le}}",
            ).format(PromQueryFormat.HEATMAP)
        )
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("none").decimals(2).min(0).max(1))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(heatmap_model.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)  # a few anomalies stay visible next to thousands of normal images
            .steps(64)
        )
        .cell_values(heatmap.CellValues().unit("short"))
        .height(9)
        .span(12)
    )


def similarity_quantiles() -> timeseries.Panel:
    def q(level: float, ref: str) -> Target:
        buckets = series("pixelwatch_similarity_bucket")
        expr = f"histogram_quantile({level}, sum by (le) (rate({buckets}[{RATE}])))"
        return query(expr, f"p{round(level * 100)} similarity", ref)

    dashed = model.DynamicConfigValue(
        id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
    )
    red = model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"})
    return (
        graph(
            "Similarity quantiles and threshold",
            "Low and median similarity of scored images; images under the red line are anomalies.",
            [
                q(0.05, "A"),
                q(0.5, "B"),
                query(f"max({series('pixelwatch_threshold')})", "threshold", "C"),
            ],
            "none",
        )
        .min(0)
        .max(1)
        .fill_opacity(0)
        .override_by_name("threshold", [dashed, red])
        .height(9)
        .span(12)
    )


def inference_latency() -> timeseries.Panel:
    return graph(
        "Batch scoring time p50 / p99",
        "Seconds to decode, score (one onnxruntime call) and queue the outputs of a batch.",
        quantiles("pixelwatch_inference_seconds"),
        "s",
    )


def end_to_end_latency() -> timeseries.Panel:
    return graph(
        "End-to-end latency p50 / p99",
        "From the image's ts (or Kafka timestamp) to its score being handed to the producer.",
        quantiles("pixelwatch_end_to_end_latency_seconds"),
        "s",
    )


def batch_size() -> timeseries.Panel:
    mean = (
        f"sum(rate({series('pixelwatch_batch_size_sum')}[{RATE}]))"
        f" / sum(rate({series('pixelwatch_batch_size_count')}[{RATE}]))"
    )
    return graph(
        "Batch size",
        "Messages per onnxruntime call: small batches mean a quiet stream or a short window.",
        [*quantiles("pixelwatch_batch_size"), query(mean, "mean", "C")],
        "short",
    )


def dead_letters() -> timeseries.Panel:
    return (
        graph(
            "Dead letters per second by reason",
            "Messages sent to the dead-letter topic; each keeps its bytes and an error header.",
            [
                query(
                    f"sum by (reason) (rate({series('pixelwatch_dlq_total')}[{RATE}]))",
                    "{{reason}}",
                )
            ],
            "short",
        )
        .stacking(common.StackingConfig().mode(common_model.StackingMode.NORMAL))
        .span(12)
    )


def consumer_lag() -> timeseries.Panel:
    return graph(
        "Consumer lag by partition",
        "Messages in each input partition not yet committed by the group.",
        [
            query(
                f"sum by (topic, partition) ({series('pixelwatch_consumer_lag')})",
                "{{topic}}[{{partition}}]",
            )
        ],
        "short",
    ).span(12)


def model_info() -> table.Panel:
    hidden = {name: True for name in ("Time", "__name__", "job", "Value #A")}
    return (
        table.Panel()
        .title("Model per worker")
        .description("The scoring model, metric and threshold each worker uses.")
        .datasource(DATASOURCE)
        .targets(
            [
                query(series("pixelwatch_model_info"), ref="A")
                .format(PromQueryFormat.TABLE)
                .instant(),
                query(series("pixelwatch_threshold"), ref="B")
                .format(PromQueryFormat.TABLE)
                .instant(),
            ]
        )
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": hidden, "renameByName": {"Value #B": "threshold"}},
            )
        )
        .height(6)
        .span(16)
    )


def topic_partitions() -> table.Panel:
    hidden = {name: True for name in ("Time",)}
    return (
        table.Panel()
        .title("Topic partitions")
        .description(
            "Partitions of each topic as the workers found them at start-up; mismatch 1 means "
            "it differs from PIXELWATCH_PARTITIONS (the input topic's count bounds how many "
            "workers share the work)."
        )
        .datasource(DATASOURCE)
        .targets(
            [
                query(f"max by (topic) ({series('pixelwatch_topic_partitions')})", ref="A")
                .format(PromQueryFormat.TABLE)
                .instant(),
                query(f"max by (topic) ({series('pixelwatch_topic_partitions_mismatch')})", ref="B")
                .format(PromQueryFormat.TABLE)
                .instant(),
            ]
        )
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": hidden,
                    "renameByName": {"Value #A": "partitions", "Value #B": "mismatch"},
                },
            )
        )
        .height(6)
        .span(8)
    )


def delivery() -> timeseries.Panel:
    # Committed offsets are gauges: their slope is the committed message rate. An offset is
    # committed only after its outputs are confirmed, so a gap between the lines is backlog
    # waiting for the broker.
    return graph(
        "Consumed, committed and unconfirmed",
        "Messages consumed and committed per second, and consumed messages whose outputs "
        "the broker has not confirmed yet (consuming pauses at PIXELWATCH_MAX_IN_FLIGHT).",
        [
            query(f"sum(rate({series('pixelwatch_batch_size_sum')}[{RATE}]))", "consumed/s", "A"),
            query(
                f"sum(deriv({series('pixelwatch_committed_offset')}[{RATE}]))", "committed/s", "B"
            ),
            query(f"sum({series('pixelwatch_unconfirmed_messages')})", "unconfirmed", "C"),
        ],
        "short",
    ).span(6)


def delivery_failures() -> timeseries.Panel:
    return graph(
        "Outputs refused by the broker per second",
        "Records the broker did not take after the producer's retries, by topic and error. "
        "A refused output is replaced by a dead letter (reason delivery); a refused dead "
        "letter stops the worker. Empty in a healthy system.",
        [
            query(
                "sum by (topic, reason) "
                f"(rate({series('pixelwatch_delivery_failures_total')}[{RATE}]))",
                "{{topic}} {{reason}}",
            )
        ],
        "short",
    ).span(6)


def alert_line(panel: timeseries.Panel, value: float) -> timeseries.Panel:
    """A dashed red line where an alert fires."""
    return panel.thresholds(
        dashboard.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps(
            [model.Threshold(value=None, color="green"), model.Threshold(value=value, color="red")]
        )
    ).thresholds_style(
        common.GraphThresholdsStyleConfig().mode(common_model.GraphThresholdsStyleMode.DASHED)
    )


def drift() -> timeseries.Panel:
    return alert_line(
        graph(
            "Similarity drift (KS distance to normal images)",
            "Per live model version: the largest gap between the share of the drift window's "
            "images and the share of the model's normal reference images below any similarity "
            "(two-sample KS distance). The dashed line is the alert threshold.",
            [query(f"max by (version) ({series('pixelwatch_similarity_drift')})", "{{version}}")],
            "none",
        )
        .min(0)
        .max(1),
        DRIFT_ALERT,
    )


def window_anomaly_rate() -> timeseries.Panel:
    return graph(
        "Anomaly rate over the drift window",
        "Share of the drift window's images (PIXELWATCH_DRIFT_WINDOW, all workers) flagged, "
        "per live model version. Compare with the model's false-positive rate on normal images.",
        [query(f"max by (version) ({series('pixelwatch_anomaly_rate')})", "{{version}}")],
        "percentunit",
    ).min(0)


def window_images() -> stat.Panel:
    return single(
        "Images in the drift window",
        "Scored images the drift window holds; drift is reported from PIXELWATCH_DRIFT_MIN_IMAGES.",
        query(f"max({series('pixelwatch_drift_window_images')})", "images"),
        "short",
    ).span(4)


def suggested_threshold() -> stat.Panel:
    return (
        single(
            "Suggested threshold (not applied)",
            "The threshold that would flag the model's calibrated false-positive rate of the drift "
            "window, when PIXELWATCH_SUGGEST_THRESHOLD is on. Workers never apply it.",
            query(f"max({series('pixelwatch_suggested_threshold')})", "suggested"),
            "none",
        )
        .decimals(2)
        .span(4)
    )


def reloads() -> timeseries.Panel:
    return graph(
        "Models offered to the workers, by result",
        "Models validated by the workers (published, promoted, rolled back, a changed file): ok, "
        "or the check that refused it. A refused model leaves the live one scoring.",
        [
            query(
                f"sum by (result) (increase({series('pixelwatch_model_reloads_total')}[{RATE}]))",
                "{{result}}",
            )
        ],
        "short",
    )


def shadow_agreement() -> timeseries.Panel:
    verdicts = series("pixelwatch_shadow_verdicts_total")
    both = series("pixelwatch_shadow_verdicts_total", 'verdict=~"both_.*"')
    only = series("pixelwatch_shadow_verdicts_total", 'verdict=~".*_only"')
    agree = f"sum(rate({both}[{RATE}])) / sum(rate({verdicts}[{RATE}]))"
    return graph(
        "Shadow model: verdicts agreeing with the live model",
        "Share of images on which the shadow model and the live model agree (both normal or "
        "both anomalous), and the shares flagged by only one of them.",
        [
            query(agree, "agree", "A"),
            query(
                f"sum by (verdict) (rate({only}[{RATE}])) / scalar(sum(rate({verdicts}[{RATE}])))",
                "{{verdict}}",
                "B",
            ),
        ],
        "percentunit",
    ).min(0)


def shadow_difference() -> timeseries.Panel:
    def q(level: float, ref: str) -> Target:
        expr = (
            f"histogram_quantile({level}, sum by (le) "
            f"(rate({series('pixelwatch_shadow_similarity_difference_bucket')}[{RATE}])))"
        )
        return query(expr, f"p{round(level * 100)}", ref)

    return graph(
        "Shadow minus live similarity p5 / p50 / p95",
        "Per image, the shadow model's similarity minus the live model's: above 0 the "
        "candidate finds the images more normal.",
        [q(0.05, "A"), q(0.5, "B"), q(0.95, "C")],
        "none",
    )


def model_versions() -> timeseries.Panel:
    return graph(
        "Model version over time",
        "Workers scoring with each live model version, and with each shadow version.",
        [
            query(
                f"count by (version) ({series('pixelwatch_model_info')})", "live {{version}}", "A"
            ),
            query(
                f"count by (version) ({series('pixelwatch_shadow_model_info')})",
                "shadow {{version}}",
                "B",
            ),
        ],
        "none",
    ).span(24)


def build() -> model.Dashboard:
    variables = [
        dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        dashboard.QueryVariable("job")
        .label("Job")
        .datasource(DATASOURCE)
        .query("label_values(pixelwatch_model_info, job)")
        .current(model.VariableOption(selected=True, text="pixelwatch", value="pixelwatch"))
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD),
        dashboard.QueryVariable("namespace")
        .label("Namespace")
        .datasource(DATASOURCE)
        .query('label_values(pixelwatch_model_info{job=~"$job"}, namespace)')
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD),
        dashboard.QueryVariable("threshold")
        .datasource(DATASOURCE)
        .query(f"query_result(max({series('pixelwatch_threshold')}))")
        # query_result lines read `{} 0.6 1712345678000`: keep the value.
        .regex(r"/\} (\S+) /")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .hide(model.VariableHide.HIDE_VARIABLE),
    ]
    board = (
        dashboard.Dashboard("pixelwatch")
        .uid(UID)
        .description(
            "Streaming image anomaly detection: throughput, verdicts, latency, lag, models, drift."
        )
        .tags(["pixelwatch", "kafka"])
        .editable()
        .time("now-1h", "now")
        .refresh("30s")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .variables(list(variables))
        .with_row(dashboard.Row("Verdicts"))
        .with_panel(throughput())
        .with_panel(anomaly_rate())
        .with_panel(workers())
        .with_panel(threshold())
        .with_panel(similarity_heatmap())
        .with_panel(similarity_quantiles())
        .with_row(dashboard.Row("Performance"))
        .with_panel(inference_latency())
        .with_panel(end_to_end_latency())
        .with_panel(batch_size())
        .with_row(dashboard.Row("Errors and backlog"))
        .with_panel(dead_letters())
        .with_panel(consumer_lag())
        .with_row(dashboard.Row("Model and delivery"))
        .with_panel(model_info())
        .with_panel(topic_partitions())
        .with_panel(delivery())
        .with_panel(delivery_failures())
        .with_row(dashboard.Row("Model lifecycle and drift"))
        .with_panel(drift())
        .with_panel(window_anomaly_rate())
        .with_panel(window_images())
        .with_panel(suggested_threshold())
        .with_panel(reloads())
        .with_panel(shadow_agreement())
        .with_panel(shadow_difference())
        .with_panel(model_versions())
    )
    built = board.build()
    # Stable ids in layout order, so links to a panel (`viewPanel=`) survive regeneration.
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    return built


def render() -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run python {__file__}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
