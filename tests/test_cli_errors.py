"""Operator mistakes end in one line and exit code 2, never in a traceback or silence."""

import os
import subprocess
import sys
import uuid

import pytest

from service.config import unknown_variables
from service.kafka.broker import free_port
from service.samples import SEED_TEST


def pixelwatch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIXELWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True, text=True, timeout=120, check=False, env={**clean, **env},
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_produce_without_a_broker_says_so_in_one_line() -> None:
    port = free_port()
    line = one_line_error(pixelwatch("produce", str(SEED_TEST), "--bootstrap", f"127.0.0.1:{port}"))
    assert line == f"error: Kafka at 127.0.0.1:{port} not reachable (no server answered)"


@pytest.mark.kafka
def test_produce_to_a_topic_that_does_not_exist_says_so_in_one_line(kafka_bootstrap: str) -> None:
    topic = f"absent-{uuid.uuid4().hex[:8]}"
    result = pixelwatch("produce", str(SEED_TEST), "--bootstrap", kafka_bootstrap, "--topic", topic)
    line = one_line_error(result)
    assert line.startswith(f"error: topic {topic} does not exist on {kafka_bootstrap}; ")


def test_an_invalid_setting_is_named_with_its_value() -> None:
    line = one_line_error(pixelwatch("produce", str(SEED_TEST), PIXELWATCH_BATCH_SIZE="many"))
    assert line.startswith("error: invalid setting PIXELWATCH_BATCH_SIZE='many': ")


def test_a_rule_across_settings_is_one_line_too() -> None:
    line = one_line_error(
        pixelwatch("produce", str(SEED_TEST), PIXELWATCH_SECURITY_PROTOCOL="SASL_SSL")
    )
    assert line == (
        "error: invalid settings: security_protocol SASL_SSL needs "
        "PIXELWATCH_SASL_USERNAME and PIXELWATCH_SASL_PASSWORD"
    )


@pytest.mark.parametrize("command", [["produce", str(SEED_TEST)], ["worker"]])
def test_a_misspelled_variable_is_refused_with_the_closest_setting(command: list[str]) -> None:
    line = one_line_error(pixelwatch(*command, PIXELWATCH_THRESHHOLD="0.5"))
    assert line == (
        "error: PIXELWATCH_THRESHHOLD is not a pixelwatch setting; "
        "did you mean PIXELWATCH_THRESHOLD?"
    )


def test_only_our_namespace_is_checked_and_every_setting_is_known() -> None:
    assert unknown_variables({"PATH": "/bin", "PIXELWATCH_BATCH_SIZE": "5"}) == []
    assert unknown_variables({"PIXELWATCH_CACHE_DIR": "/tmp"}) == []  # the broker's jar cache
    assert unknown_variables({"PIXELWATCH_FRAMES": "1"}) == [
        "PIXELWATCH_FRAMES is not a pixelwatch setting; see docs/reference/settings.md"
    ]


def test_a_negative_rate_is_refused() -> None:
    line = one_line_error(pixelwatch("produce", str(SEED_TEST), "--rate", "-5"))
    assert line == "error: --rate -5 is negative (0 sends as fast as possible)"
