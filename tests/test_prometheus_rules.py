"""The shipped Prometheus configuration and alert rules, checked and unit-tested by promtool."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run deploy/prometheus-setup.sh (Debian's prometheus)"
    return path


def run(promtool: str, *args: str) -> str:
    result = subprocess.run(
        [promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def load(name: str) -> Any:
    return yaml.safe_load((PROMETHEUS_DIR / name).read_text())


def test_prometheus_config_is_valid_and_loads_the_alert_rules(promtool: str) -> None:
    output = run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output


def test_alert_rules_are_valid(promtool: str) -> None:
    output = run(promtool, "check", "rules", "alerts.yml")
    assert "SUCCESS: 9 rules found" in output


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts_test.yml")


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {r["alert"] for g in load("alerts.yml")["groups"] for r in g["rules"] if "alert" in r}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load("alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts == {
        "PixelwatchAnomalyRateHigh",
        "PixelwatchDeadLetters",
        "PixelwatchWorkerDown",
        "PixelwatchNoWorkers",
        "PixelwatchConsumerLagGrowing",
        "PixelwatchNotProcessing",
        "PixelwatchSimilarityDrift",
        "PixelwatchModelRefused",
        "PixelwatchDeliveryFailures",
    }
    assert firing == alerts, f"no firing case for {alerts - firing}"
    assert quiet == alerts, f"no quiet case for {alerts - quiet}"


def rules() -> list[dict[str, Any]]:
    return [r for g in load("alerts.yml")["groups"] for r in g["rules"]]


def test_the_scrape_job_is_the_one_the_alerts_select() -> None:
    jobs = {c["job_name"] for c in load("prometheus.yml")["scrape_configs"]}
    assert "pixelwatch" in jobs
    for rule in rules():
        selectors = re.findall(r"\b(pixelwatch_\w+|up)(\{[^}]*\})?", rule["expr"])
        assert selectors, rule["alert"]
        for name, matchers in selectors:
            assert matchers.startswith('{job="pixelwatch"'), (rule["alert"], name)


def test_aggregating_alerts_keep_namespaces_apart() -> None:
    for rule in rules():
        for grouping in re.findall(r"\b(?:sum|max|min|count) by \(([^)]*)\)", rule["expr"]):
            assert "namespace" in grouping.split(", "), (rule["alert"], grouping)


def test_every_alert_links_its_runbook_entry_on_the_operations_page() -> None:
    operations = (PROMETHEUS_DIR.parents[1] / "docs" / "operations.md").read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', operations))
    for rule in rules():
        annotations = rule["annotations"]
        assert "runbook" not in annotations, "Alertmanager and Grafana read runbook_url"
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/operations.md" and anchor == rule["alert"].lower()
        assert anchor in anchors, f"no runbook entry for {rule['alert']}"


def test_prometheus_sends_alerts_to_an_alertmanager() -> None:
    [manager] = load("prometheus.yml")["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["alertmanager:9093"]}]
