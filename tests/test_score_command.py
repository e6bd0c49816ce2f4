"""`pixelwatch score`: human and JSON output, and one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

from service.samples import SEED_TEST


def pixelwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_json_mode_prints_one_object_per_image(seed_model_path: Path) -> None:
    result = pixelwatch("score", "--model", str(seed_model_path), "--json", str(SEED_TEST))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    for row in rows:
        assert {"index", "similarity", "metric", "threshold", "anomaly", "scores"} <= set(row)
        assert row["metric"] == "hamming" and row["threshold"] == 0.6
        assert row["anomaly"] == (row["similarity"] < 0.6)
        assert set(row["scores"]) == {"hamming", "ruzicka", "dice", "cosine", "memory", "combined"}


def test_human_mode_shows_input_beside_reconstruction(seed_model_path: Path) -> None:
    result = pixelwatch("score", "--model", str(seed_model_path), str(SEED_TEST))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("#0 (line 3)  hamming ")
    assert "input" in lines[1] and "reconstruction" in lines[1]
    assert lines[3] == "XXXXXX..   .XXXXXX."  # shifted square beside the centred one
    assert lines[-1].endswith("images below the hamming threshold 60%")


def test_metric_and_threshold_flags_override_the_model(seed_model_path: Path) -> None:
    result = pixelwatch(
        "score", "--model", str(seed_model_path), "--json", "--metric", "ruzicka",
        "--threshold", "1", str(SEED_TEST),
    )  # fmt: skip
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(r["metric"] == "ruzicka" and r["threshold"] == 1.0 for r in rows)
    assert all(r["anomaly"] == (r["scores"]["ruzicka"] < 1.0) for r in rows)


def test_bad_image_file_gives_a_one_line_error(seed_model_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("........ .XXXXXX. .X....X. .X..?.X. .X....X. .X....X. .XXXXXX. ........\n")
    result = pixelwatch("score", "--model", str(seed_model_path), str(bad))
    assert result.returncode == 2
    assert (
        result.stderr
        == f"error: {bad}:line 1 column 32: unknown pixel character '?' (use X or .)\n"
    )
    assert result.stdout == ""


def test_garbage_model_file_gives_a_one_line_error(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not a model")
    result = pixelwatch("score", "--model", str(model), str(SEED_TEST))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {model}: not a loadable ONNX model")
    assert len(result.stderr.strip().splitlines()) == 1
