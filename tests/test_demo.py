"""`pixelwatch demo` end to end on the session broker: offline scores, then live anomalies."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_demo_streams_images_and_prints_the_anomalies(
    kafka_bootstrap: str, seed_model_path: Path, tmp_path: Path
) -> None:
    model = tmp_path / "seed.onnx"
    shutil.copy(seed_model_path, model)
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "demo", "--model", str(model), "--noise", "3",
         "--normal", "4"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
        env={**os.environ, "PIXELWATCH_BOOTSTRAP": kafka_bootstrap, "COLUMNS": "100"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert f"using the trained model {model}" in out
    assert "1 of 4 images below the hamming threshold 60%" in out  # offline: only the corners
    assert "ANOMALY corners  hamming 56.2%" in out
    for i in range(3):
        assert f"ANOMALY noise-{i}" in out
    assert "ANOMALY normal-" not in out and "ANOMALY x " not in out
    assert "11 images scored: 4 anomalies, 7 normal (threshold: hamming < 60%)" in out
    assert "worker stopped (exit code 0)" in out
