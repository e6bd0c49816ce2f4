"""`pixelwatch evaluate`: metrics on a controlled case, JSON output, labelled CSV, errors, report.

The model here is a stand-in network that keeps the first half of the image and blanks the
second, exported as a real scoring graph: an image's Hamming similarity is then exactly
1 - (sum of its second half) / 64, so every number below is known in advance. Its latent
code is the mean of the second half, and its memory bank holds blank second halves: the
memory distance is that mean, so `memory` (and `combined`) rank the images as Hamming does.
"""

import csv
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import nn

import service
from model_export.evaluate import quality
from model_export.export import export_scoring_graph, scoring_graph
from service.cli import main
from service.scoring.model import FORMAT_VERSION, ModelMetadata

SIZE, HALF = 64, 32
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Second-half pixel values: normal images score 1, 1, 0.95, 0.85; anomalous 0.925, 0.8, 0.7.
NORMAL_LEVELS = (0.0, 0.0, 0.1, 0.3)
ANOMALOUS_LEVELS = (0.15, 0.4, 0.6)
# At threshold 0.9: flagged are the normal 0.85 and the anomalous 0.8 and 0.7.
EXPECTED = {
    "auroc": 11 / 12,  # of 12 (anomalous, normal) pairs only (0.925, 0.85) ranks wrong
    "average_precision": (1 + 1 + 3 / 4) / 3,
    "fpr": 1 / 4,
    "recall": 2 / 3,
    "precision": 2 / 3,
    "f1": 2 / 3,
    "tp": 2,
    "fp": 1,
    "tn": 3,
    "fn": 1,
}


class KeepFirstHalf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor
        self.register_buffer("mask", (torch.arange(SIZE) < HALF).float())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels * self.mask

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels[:, HALF:].mean(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    graph = scoring_graph(KeepFirstHalf(), "gray", images((0.0, 0.0, 0.0), 3))
    metadata = ModelMetadata(
        format_version=FORMAT_VERSION,
        width=8,
        height=8,
        mode="gray",
        metric="hamming",
        threshold=0.9,
        training_sha256="0" * 64,
        pixelwatch_version=service.__version__,
        created_at=datetime.now(UTC),
        final_loss=0.0,
        arch="halves",
        memory=graph.memory_info,
    )
    path = tmp_path_factory.mktemp("evaluate") / "halves.onnx"
    export_scoring_graph(graph, SIZE, metadata, path)
    return path


def images(levels: tuple[float, ...], seed: int) -> NDArray[np.float32]:
    pixels = np.random.default_rng(seed).random((len(levels), SIZE), dtype=np.float32)
    pixels[:, HALF:] = np.asarray(levels, dtype=np.float32)[:, None]
    return pixels


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("images")
    normal, anomalous = images(NORMAL_LEVELS, 1), images(ANOMALOUS_LEVELS, 2)
    paths = {"normal": directory / "normal.npy", "anomalous": directory / "anomalous.csv"}
    np.save(paths["normal"], normal)
    np.savetxt(paths["anomalous"], anomalous, delimiter=",", fmt="%.8f")
    # The label column sits in the middle; rows alternate between the classes.
    labelled = directory / "labelled.csv"
    rows = [(0, p) for p in normal] + [(1, p) for p in anomalous]
    rows = [rows[i] for i in (0, 4, 1, 5, 2, 6, 3)]
    with labelled.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"p{i}" for i in range(10)), "label", *(f"p{i}" for i in range(10, 64))])
        for label, pixels in rows:
            values = [f"{v:.8f}" for v in pixels]
            writer.writerow([*values[:10], label, *values[10:]])
    paths["labelled"] = labelled
    return paths


def evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["evaluate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_expected(result: dict[str, object]) -> None:
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key


def test_quality_matches_hand_computed_values() -> None:
    similarity = np.asarray([1.0, 1.0, 0.95, 0.85, 0.925, 0.8, 0.7])
    labels = np.asarray([0, 0, 0, 0, 1, 1, 1], dtype=np.int8)
    result = quality(similarity, labels, threshold=0.9)
    assert_expected(dataclasses.asdict(result))


def test_nothing_flagged_has_no_precision_and_zero_f1() -> None:
    result = quality(np.asarray([0.9, 0.8, 0.3]), np.asarray([0, 1, 1], dtype=np.int8), 0.1)
    assert (result.auroc, result.fpr, result.recall, result.precision, result.f1) == (
        1.0,
        0.0,
        0.0,
        None,
        0.0,
    )


def test_json_output_for_normal_and_anomalous_files(
    model_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = evaluate(
        capsys,
        *("--model", str(model_path), "--normal", str(files["normal"])),
        *("--anomalous", str(files["anomalous"]), "--json"),
    )
    assert (code, err) == (0, "")
    result = json.loads(out)
    assert_expected(result)
    assert (result["normal"], result["anomalous"], result["threshold"]) == (4, 3, 0.9)
    assert (result["metric"], result["arch"], result["mode"], result["report"]) == (
        "hamming",
        "halves",
        "gray",
        None,
    )
    # Dice ranks exactly as Ruzicka: it is named as such, not ranked as a choice of its own.
    assert set(result["metrics"]) == {"hamming", "ruzicka", "cosine", "memory", "combined"}
    assert result["same_ranking_as"] == {"dice": "ruzicka"}
    for metric in ("hamming", "memory", "combined"):
        assert result["metrics"][metric]["auroc"] == pytest.approx(11 / 12), metric


def test_labelled_csv_gives_the_same_numbers(
    model_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = evaluate(
        capsys, "--model", str(model_path), "--labelled", str(files["labelled"]), "--json"
    )
    assert (code, err) == (0, "")
    result = json.loads(out)
    assert_expected(result)
    assert (result["normal"], result["anomalous"]) == (4, 3)


def test_text_summary_and_threshold_override(
    model_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = evaluate(
        capsys,
        *("--model", str(model_path), "--labelled", str(files["labelled"])),
        *("--threshold", "0.96"),
    )
    lines = out.splitlines()
    assert code == 0
    assert (
        lines[0] == f"evaluated {model_path} (halves, gray mode) on 4 normal and 3 anomalous images"
    )
    assert lines[1] == "metric     hamming: anomaly if similarity < 0.96"
    assert lines[2] == "AUROC      0.9167"
    assert lines[4] == "FPR        0.5000 (2 of 4 normal images flagged)"
    assert lines[5] == "recall     1.0000 (3 of 3 anomalous images flagged)"
    by_metric = lines[8]
    assert by_metric.startswith("by metric  AUROC hamming 0.9167, ruzicka ")
    assert " (= dice), cosine " in by_metric and "dice 0." not in by_metric
    assert by_metric.endswith(", memory 0.9167, combined 0.9167")


def test_dice_can_still_be_judged_at_its_own_threshold(
    model_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--model", str(model_path), "--labelled", str(files["labelled"]), "--json")
    _, dice_out, _ = evaluate(capsys, *args, "--metric", "dice")
    _, ruzicka_out, _ = evaluate(capsys, *args, "--metric", "ruzicka")
    dice, ruzicka = json.loads(dice_out), json.loads(ruzicka_out)
    assert dice["metric"] == "dice"
    assert dice["auroc"] == pytest.approx(ruzicka["auroc"])  # the same ranking
    assert dice["fpr"] != ruzicka["fpr"]  # but another number at the same threshold


def test_report_directory_gets_a_png_and_the_json(
    model_path: Path, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "reports" / "run-1"
    code, out, _ = evaluate(
        capsys,
        *("--model", str(model_path), "--labelled", str(files["labelled"])),
        *("--report", str(report), "--json"),
    )
    png = report / "halves.evaluation.png"
    assert code == 0 and json.loads(out)["report"] == str(png)
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    saved = json.loads((report / "halves.evaluation.json").read_text())
    assert_expected(saved)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


HEADER = "label," + ",".join(f"p{i}" for i in range(64)) + "\n"
ROW0 = "0," + ",".join(["0.5"] * 64) + "\n"
ROW1 = "1," + ",".join(["0.25"] * 64) + "\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (ROW0, "row 1: the header must name exactly one 'label' column"),
        (
            "label," + ",".join(f"p{i}" for i in range(63)) + "\n",
            "row 1: 63 pixel columns, the model takes 64 (8x8)",
        ),
        (
            HEADER + ROW0 + "2," + ",".join(["0.5"] * 64) + "\n",
            "row 3: label '2' must be 0 (normal) or 1 (anomalous)",
        ),
        (HEADER + ROW0 + "1,0.5,0.5\n", "row 3: 3 columns, the header has 65"),
        (
            HEADER + ROW1 + "0," + ",".join(["0.5"] * 63) + ",dark\n",
            "row 3: 'dark' is not a number",
        ),
        (HEADER + "0," + ",".join(["1.5"] * 64) + "\n", "row 2: pixel value 1.5 is outside [0, 1]"),
        (HEADER, "file: contains no labelled images"),
    ],
)
def test_bad_labelled_csv_is_one_line_naming_file_and_row(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    bad = write(tmp_path / "bad.csv", text)
    code, out, err = evaluate(capsys, "--model", str(model_path), "--labelled", str(bad))
    assert (code, out) == (2, "")
    assert err == f"error: {bad}:{problem}\n"


def test_one_class_only_is_refused(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only_normal = write(tmp_path / "normal-only.csv", HEADER + ROW0 + ROW0)
    code, _, err = evaluate(capsys, "--model", str(model_path), "--labelled", str(only_normal))
    assert code == 2
    assert err == (
        "error: no anomalous images (label 1): evaluation needs both normal and anomalous\n"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--normal", "n.npy"], "give --normal and --anomalous, or --labelled (not both)"),
        ([], "give --normal and --anomalous, or --labelled (not both)"),
        (
            ["--labelled", "l.csv", "--normal", "n.npy", "--anomalous", "a.npy"],
            "give --normal and --anomalous, or --labelled (not both)",
        ),
        (["--labelled", "l.csv", "--threshold", "2"], "--threshold 2 is outside [0, 1]"),
    ],
)
def test_inconsistent_arguments_are_refused(
    model_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, _, err = evaluate(capsys, "--model", str(model_path), *extra)
    assert (code, err) == (2, f"error: {message}\n")


def test_missing_files_are_named(
    model_path: Path, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.npy"
    code, _, err = evaluate(
        capsys,
        "--model",
        str(model_path),
        "--normal",
        str(missing),
        "--anomalous",
        str(files["anomalous"]),
    )
    assert (code, err) == (2, f"error: {missing}:file: no such file\n")
    code, _, err = evaluate(capsys, "--model", str(missing), "--labelled", str(files["labelled"]))
    assert code == 2
    assert err == f"error: {missing}: model file not found (train one with `pixelwatch train`)\n"
