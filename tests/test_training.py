"""Training: reproducibility, threshold calibration, option checks, report and the CLI hook."""

import argparse
import os
import re
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.datasets import load_digits

from model_export import OptionError, OutputError, TrainOptions, train_and_export
from model_export.architectures import ArchitectureError
from model_export.calibrate import CalibrationError, threshold_for_fpr
from model_export.command import configure_parser, run
from model_fixtures import SEED_TRAIN, seed_model_path  # noqa: F401
from service.errors import InputError, PixelwatchError
from service.scoring.model import load_model
from service.scoring.similarity import METRICS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's 1797 handwritten digits (8x8, 0..16) scaled to [0, 1], as .npy."""
    images = load_digits().images.astype(np.float32) / 16.0
    path = tmp_path_factory.mktemp("digits") / "digits.npy"
    np.save(path, images)
    return path


def probe() -> NDArray[np.float32]:
    return np.random.default_rng(7).random((16, 64), dtype=np.float32)


def test_same_seed_gives_identical_outputs_and_another_seed_does_not(tmp_path: Path) -> None:
    outputs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        options = TrainOptions(epochs=20, seed=seed, mode="gray", report=False)
        result = train_and_export(SEED_TRAIN, tmp_path / f"{name}.onnx", options)
        scored = load_model(result.model_path).score(probe())
        outputs.append([scored.reconstruction, *(scored.scores[m] for m in METRICS)])
    first, again, other = outputs
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_fpr_calibration_flags_that_fraction_of_held_out_normal_images(
    digits: Path, tmp_path: Path
) -> None:
    options = TrainOptions(
        epochs=10, batch_size=32, mode="gray", metric="hamming", fpr=0.05, report=False
    )
    result = train_and_export(digits, tmp_path / "digits.onnx", options)
    held_out = len(result.holdout_indices)
    assert held_out == 359  # 20% of 1797
    # Two disjoint parts: trained on, and held out to stop training and calibrate.
    train = set(result.train_indices)
    assert np.array_equal(result.validation_indices, result.holdout_indices)
    assert not train & set(result.holdout_indices)
    assert len(train) + held_out == 1797

    model = load_model(result.model_path)
    assert model.metadata.threshold == result.calibration.threshold
    pixels = np.load(digits).reshape(-1, 64)
    flagged = model.score(pixels[result.holdout_indices]).anomaly
    assert abs(flagged.mean() - 0.05) <= 1 / held_out
    assert int(flagged.sum()) == result.calibration.flagged
    assert result.calibration.describe() == (
        f"calibrated for --fpr 0.05: flags {int(flagged.sum())} of 359 held-out normal images"
    )


def test_threshold_for_fpr_flags_the_lowest_similarities() -> None:
    similarities = np.linspace(0.5, 1.0, 100, dtype=np.float32)
    threshold = threshold_for_fpr(similarities, 0.1)
    assert (similarities < threshold).sum() == 10
    assert similarities[9] < threshold < similarities[10]


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 1.5])
def test_fpr_outside_the_open_unit_interval_is_rejected(fpr: float) -> None:
    with pytest.raises(PixelwatchError) as caught:
        TrainOptions(fpr=fpr)
    assert str(caught.value) == f"--fpr must be between 0 and 1, exclusive (got {fpr:g})"


def test_fpr_below_one_over_the_holdout_size_is_rejected_before_training(
    digits: Path, tmp_path: Path
) -> None:
    out = tmp_path / "never.onnx"
    with pytest.raises(CalibrationError) as caught:
        train_and_export(digits, out, TrainOptions(fpr=0.001))
    assert str(caught.value) == (
        f"--fpr 0.001 needs at least 1000 held-out images, but {digits} has 1797 images and "
        "holds out 359 (20%); use --fpr >= 0.00279 or give more images"
    )
    assert not out.exists()


def test_fpr_on_the_two_seed_images_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"holds out 1 \(20%\); use --threshold"):
        train_and_export(SEED_TRAIN, tmp_path / "never.onnx", TrainOptions(fpr=0.1))


def test_threshold_and_fpr_together_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(OptionError, match=r"^--threshold and --fpr are mutually exclusive"):
        TrainOptions(threshold=0.5, fpr=0.1)
    parser = argparse.ArgumentParser(prog="pixelwatch train")
    configure_parser(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--data", "d", "--out", "m", "--threshold", "0.5", "--fpr", "0.1"])
    assert exited.value.code == 2
    assert "argument --fpr: not allowed with argument --threshold" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 0}, "--epochs must be a whole number >= 1 (got 0)"),
        ({"batch_size": 0}, "--batch-size must be a whole number >= 1 (got 0)"),
        ({"width": -8}, "--width must be a whole number >= 1 (got -8)"),
        ({"lr": 0.0}, "--lr must be a positive number (got 0)"),
        ({"threshold": 1.5}, "--threshold must be between 0 and 1 (got 1.5)"),
        ({"seed": -1}, "--seed must be between 0 and 2**63 - 1 (got -1)"),
        ({"mode": "color"}, "--mode must be one of binary, gray (got 'color')"),
        (
            {"metric": "euclid"},
            "--metric must be one of hamming, ruzicka, dice, cosine, memory, combined, auto "
            "(got 'euclid')",
        ),
        (
            {"arch": "lstm"},
            "--arch must be one of contractive, conv, deep, denoising, dense, seq2seq, sparse, "
            "vae, auto (got 'lstm')",
        ),
    ],
)
def test_invalid_options_are_rejected_with_a_clear_message(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(OptionError) as caught:
        TrainOptions(**options)  # type: ignore[arg-type]  # deliberately wrong values
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hidden": 0}, "dense: hidden must be a whole number >= 1 (got 0)"),
        ({"activation": "relu"}, "dense: activation must be one of tanh, sigmoid, identity"),
        ({"depth": 3}, "dense: unknown parameter(s) depth (accepted: activation, code, hidden)"),
    ],
)
def test_invalid_architecture_parameters_are_rejected(
    params: dict[str, object], message: str
) -> None:
    with pytest.raises(ArchitectureError) as caught:
        TrainOptions(arch_params=params)
    assert str(caught.value).startswith(message)


def test_report_is_a_png_next_to_the_model(seed_model_path: Path) -> None:  # noqa: F811
    report = seed_model_path.with_suffix(".report.png")
    data = report.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000  # four panels, not an empty canvas


def test_train_command_writes_a_loadable_model_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nested" / "models" / "seed.onnx"
    parser = argparse.ArgumentParser(prog="pixelwatch train")
    configure_parser(parser)
    argv = ["--data", str(SEED_TRAIN), "--out", str(out), "--epochs", "50", "--metric", "dice"]
    argv += ["--threshold", "0.7", "--hidden", "8", "--seed", "5", "--no-progress"]
    args = parser.parse_args(argv)
    assert run(args) == 0

    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        "trained a dense autoencoder on 2 images "
        "(50 epochs, batch size 1, lr 0.001, binary mode, seed 5)"
    )
    assert printed[1] == f"model      {out}"
    assert printed[2] == f"report     {out.with_suffix('.report.png')}"
    assert printed[3] == "threshold  0.7 on dice: anomaly if similarity < threshold"
    assert printed[4] == "chosen     given with --threshold"
    # --arch left to auto; --metric given, so only the architecture was chosen.
    assert printed[5] == (
        "defaults   arch dense, code 4: the course's model, for 2 images (fewer than 100)"
    )
    assert printed[6] == "epochs     50, no early stopping"
    assert printed[7].startswith("loss       ") and printed[8].startswith("time       ")
    metadata = load_model(out).metadata
    assert (metadata.metric, metadata.threshold, metadata.arch_params["hidden"]) == ("dice", 0.7, 8)
    assert out.with_suffix(".report.png").read_bytes().startswith(PNG_SIGNATURE)


def test_train_command_raises_user_errors_for_the_dispatcher(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="pixelwatch train")
    configure_parser(parser)
    missing = tmp_path / "missing.txt"
    args = parser.parse_args(["--data", str(missing), "--out", str(tmp_path / "m.onnx")])
    with pytest.raises(InputError) as caught:
        run(args)
    assert str(caught.value) == f"{missing}:file: no such file"
    assert list(tmp_path.iterdir()) == []


def test_unusable_output_path_is_rejected_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="^" + re.escape(f"cannot create {blocker}: ")):
        train_and_export(SEED_TRAIN, blocker / "model.onnx", TrainOptions(epochs=100_000))
    with pytest.raises(OutputError, match=r"is a directory; give a file name"):
        train_and_export(SEED_TRAIN, tmp_path, TrainOptions(epochs=100_000))


def test_an_output_path_that_is_a_device_or_a_pipe_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/null")):
        kind = target.stat().st_mode
        with pytest.raises(OutputError, match="exists and is not a regular file"):
            train_and_export(SEED_TRAIN, target, TrainOptions(epochs=100_000))
        assert target.stat().st_mode == kind, f"{target} was replaced"
