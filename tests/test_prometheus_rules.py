"""The shipped Prometheus configuration and alert rules, checked and unit-tested by promtool."""

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
    assert "SUCCESS: 8 rules found" in output


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
    }
    assert firing == alerts, f"no firing case for {alerts - firing}"
    assert quiet == alerts, f"no quiet case for {alerts - quiet}"


def test_the_scrape_job_is_the_one_the_alerts_select() -> None:
    jobs = {c["job_name"] for c in load("prometheus.yml")["scrape_configs"]}
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    assert "pixelwatch" in jobs
    assert 'up{job="pixelwatch"}' in rules
