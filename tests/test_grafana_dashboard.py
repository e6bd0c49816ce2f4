"""The Grafana dashboard and provisioning: generated JSON in sync, every metric on a panel."""

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.controlplane.app import create_app
from service.lifecycle.window import DriftReporter
from service.observability.metrics import WorkerMetrics

GRAFANA = Path(__file__).resolve().parents[1] / "deploy" / "grafana"
ALERTS = GRAFANA.parent / "prometheus" / "alerts.yml"


def generator() -> Any:
    """deploy/grafana/dashboard.py, which is a script rather than part of a package."""
    spec = importlib.util.spec_from_file_location("pixelwatch_dashboard", GRAFANA / "dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, Any]:
    board: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "pixelwatch.json").read_text())
    return board


def panels() -> list[dict[str, Any]]:
    return [p for p in committed()["panels"] if p["type"] != "row"]


def test_committed_dashboard_is_what_the_generator_builds() -> None:
    render: Callable[[], str] = generator().render
    assert (GRAFANA / "dashboards" / "pixelwatch.json").read_text() == render(), (
        "stale JSON: run python deploy/grafana/dashboard.py"
    )


def test_every_worker_metric_is_on_a_panel() -> None:
    exprs = " ".join(t["expr"] for p in panels() for t in p["targets"])
    families = {m.name for m in WorkerMetrics(CollectorRegistry()).registry.collect()}
    assert families, "no metrics collected"
    missing = {
        f for f in families if not re.search(rf"\b{f}(_total|_bucket|_sum|_count)?\b", exprs)
    }
    assert not missing, f"metrics without a panel: {missing}"


def test_the_issues_panels_are_all_there() -> None:
    by_type = {p["title"]: p["type"] for p in panels()}
    assert by_type == {
        "Images per second by outcome": "timeseries",
        "Anomaly rate": "timeseries",
        "Workers": "stat",
        "Anomaly threshold": "stat",
        "Similarity distribution (anomaly below ${threshold})": "heatmap",
        "Similarity quantiles and threshold": "timeseries",
        "Batch scoring time p50 / p99": "timeseries",
        "End-to-end latency p50 / p99": "timeseries",
        "Batch size": "timeseries",
        "Dead letters per second by reason": "timeseries",
        "Consumer lag by partition": "timeseries",
        "Model per worker": "table",
        "Topic partitions": "table",
        "Consumed, committed and unconfirmed": "timeseries",
        "Outputs refused by the broker per second": "timeseries",
        "Similarity drift (KS distance to normal images)": "timeseries",
        "Anomaly rate over the drift window": "timeseries",
        "Images in the drift window": "stat",
        "Suggested threshold (not applied)": "stat",
        "Models offered to the workers, by result": "timeseries",
        "Shadow model: verdicts agreeing with the live model": "timeseries",
        "Shadow minus live similarity p5 / p50 / p95": "timeseries",
        "Model version over time": "timeseries",
    }


def test_every_query_selects_the_job_and_namespace_picked_on_the_dashboard() -> None:
    variables = {v["name"]: v for v in committed()["templating"]["list"]}
    assert variables["job"]["current"]["value"] == "pixelwatch"
    assert variables["namespace"]["includeAll"] and variables["namespace"]["allValue"] == ".*"
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    exprs.append(variables["threshold"]["query"])
    for expr in exprs:
        uses = re.findall(r"\b(pixelwatch_\w+)(\{[^}]*\})?", expr)
        assert uses, expr
        for name, matchers in uses:
            assert matchers.startswith('{job=~"$job", namespace=~"$namespace"'), (name, expr)


def test_panels_query_the_datasource_picked_on_the_dashboard() -> None:
    [variable] = [v for v in committed()["templating"]["list"] if v["type"] == "datasource"]
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
        assert panel["targets"], panel["title"]


def test_panels_do_not_overlap_on_the_grid() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in committed()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_anomaly_rate_panel_marks_the_alert_threshold() -> None:
    alert = re.search(r"> ([0-9.]+)\s+# THRESHOLD: anomaly share", ALERTS.read_text())
    assert alert, "alerts.yml lost its marked anomaly share"
    [panel] = [p for p in panels() if p["title"] == "Anomaly rate"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, float(alert.group(1))]


def test_the_drift_panel_marks_the_drift_alert_threshold() -> None:
    alert = re.search(r"> ([0-9.]+)\s+# THRESHOLD: KS distance", ALERTS.read_text())
    assert alert, "alerts.yml lost its marked drift threshold"
    [panel] = [p for p in panels() if p["title"].startswith("Similarity drift")]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, float(alert.group(1))]


def test_every_drift_metric_is_on_a_panel() -> None:
    settings = Settings(suggest_threshold=True)
    reporter = DriftReporter(create_app(settings), settings)
    families = {m.name for m in reporter.collect()}
    assert len(families) == 4, families
    exprs = " ".join(t["expr"] for p in panels() for t in p["targets"])
    missing = {f for f in families if not re.search(rf"\b{f}\b", exprs)}
    assert not missing, f"metrics without a panel: {missing}"


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard_folder() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/pixelwatch.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
