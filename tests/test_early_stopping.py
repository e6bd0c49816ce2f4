"""Training that scales: the automatic batch size, early stopping and what the report shows."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.lines import Line2D
from sklearn.datasets import load_digits

from model_export import TrainOptions, train_and_export
from model_export.command import configure_parser, options_from, run
from model_export.report import ReportData, draw_report
from model_export.scaling import (
    COURSE_EPOCHS,
    EARLY_STOPPING_MIN,
    MAX_AUTO_BATCH,
    MAX_AUTO_EPOCHS,
    STEPS_PER_EPOCH,
    auto_batch_size,
    validation_split,
)
from model_export.train import MIN_IMPROVEMENT, FitSettings, reconstruction_loss, train
from model_fixtures import SEED_TRAIN
from service.scoring.images import ImageShape
from service.scoring.model import load_model

DIGITS = (load_digits().images.astype(np.float32) / 16.0).reshape(-1, 64)


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("digits") / "digits.npy"
    np.save(path, DIGITS[:600])
    return path


def test_auto_batch_size_is_one_for_a_handful_of_images_and_grows_with_the_data() -> None:
    assert [auto_batch_size(n) for n in (1, 2, EARLY_STOPPING_MIN - 1)] == [1, 1, 1]
    sizes = [auto_batch_size(n) for n in (EARLY_STOPPING_MIN, 723, 5_000, 10**7)]
    assert sizes == sorted(sizes) and sizes[-1] == MAX_AUTO_BATCH
    for n in (EARLY_STOPPING_MIN, 723, 5_000):
        size = auto_batch_size(n)
        assert size & (size - 1) == 0  # a power of two
        assert STEPS_PER_EPOCH / 2 <= n / size <= STEPS_PER_EPOCH * 2


def test_auto_epochs_run_the_course_s_500_or_allow_many_when_training_stops_by_itself(
    tmp_path: Path, digits_file: Path
) -> None:
    course = train_and_export(SEED_TRAIN, tmp_path / "c.onnx", TrainOptions(report=False))
    assert course.settings.epochs == COURSE_EPOCHS == 500
    assert course.trained.epochs_run == 500
    options = TrainOptions(lr=0.05, patience=2, mode="gray", report=False)
    digits = train_and_export(digits_file, tmp_path / "d.onnx", options)
    assert digits.settings.epochs == MAX_AUTO_EPOCHS > COURSE_EPOCHS
    assert digits.trained.epochs_run < MAX_AUTO_EPOCHS


def test_validation_split_holds_out_a_tenth_of_larger_data_and_nothing_of_tiny_data() -> None:
    rows = np.arange(0, 2000, 2)
    kept, held = validation_split(rows, seed=3)
    assert len(held) == 100 and len(kept) == 900
    assert set(kept) | set(held) == set(rows) and not set(kept) & set(held)
    again, other = validation_split(rows, seed=3), validation_split(rows, seed=4)
    assert np.array_equal(again[1], held) and not np.array_equal(other[1], held)
    kept, held = validation_split(np.arange(EARLY_STOPPING_MIN - 1), seed=0)
    assert len(held) == 0 and len(kept) == EARLY_STOPPING_MIN - 1


def test_the_course_trains_as_before_one_image_per_step_every_epoch(tmp_path: Path) -> None:
    auto = train_and_export(
        SEED_TRAIN, tmp_path / "auto.onnx", TrainOptions(epochs=60, report=False)
    )
    fixed = train_and_export(
        SEED_TRAIN,
        tmp_path / "fixed.onnx",
        TrainOptions(epochs=60, batch_size=1, patience=0, report=False),
    )
    assert (
        auto.settings.batch_size == 1
        and auto.settings.lr == 1e-3
        and len(auto.validation_indices) == 0
    )
    assert auto.trained.epochs_run == 60 and auto.trained.holdout_losses == ()
    assert auto.metadata.final_loss == auto.losses[-1]
    for a, b in zip(
        auto.autoencoder.state_dict().values(), fixed.autoencoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_training_stops_once_the_held_out_loss_stalls_and_keeps_the_best_weights() -> None:
    pixels = DIGITS[:400]
    settings = FitSettings(epochs=400, lr=0.02, batch_size=32, seed=1, patience=5)
    trained = train("dense", ImageShape(), {}, pixels[:350], settings, holdout=pixels[350:])
    run, kept = trained.epochs_run, trained.kept_epoch
    assert run < 400, "the held-out loss never stalled for 5 epochs"
    assert len(trained.holdout_losses) == run
    assert run - kept == 5  # stopped exactly `patience` epochs after the best one
    best = trained.holdout_losses[kept - 1]
    assert all(loss > best * (1 - MIN_IMPROVEMENT) for loss in trained.holdout_losses[kept:])
    assert best == min(trained.holdout_losses[:kept])
    # The network carries the weights of the kept epoch, not those of the last one run.
    held = torch.from_numpy(pixels[350:])
    assert reconstruction_loss(trained.autoencoder, held) == pytest.approx(best, rel=1e-6)
    assert trained.final_loss == trained.losses[kept - 1]


def test_without_patience_every_epoch_runs_and_nothing_is_held_out(digits_file: Path) -> None:
    options = TrainOptions(epochs=3, patience=0, mode="gray", report=False)
    result = train_and_export(digits_file, digits_file.with_name("p0.onnx"), options)
    assert len(result.validation_indices) == 0 and len(result.train_indices) == 600
    assert result.trained.epochs_run == 3 and result.trained.holdout_losses == ()


def test_the_model_records_how_training_went(digits_file: Path, tmp_path: Path) -> None:
    options = TrainOptions(epochs=300, lr=0.02, patience=3, mode="gray", report=False)
    result = train_and_export(digits_file, tmp_path / "m.onnx", options)
    trained = result.trained
    assert len(result.validation_indices) == 60  # 10% of 600
    assert result.settings.batch_size == auto_batch_size(540)
    assert trained.epochs_run < 300
    params = load_model(result.model_path).metadata.arch_params
    assert params["epochs"] == 300 and params["patience"] == 3
    assert params["batch_size"] == result.settings.batch_size
    assert (params["epochs_run"], params["epoch_kept"]) == (trained.epochs_run, trained.kept_epoch)


def _values(data: object) -> list[float]:
    return [float(v) for v in np.asarray(data).ravel()]


def _loss_axes_lines(data: ReportData) -> dict[str, Line2D]:
    figure = draw_report(data)
    axes = figure.axes[0]
    return {str(line.get_label()): line for line in axes.get_lines()}


def _report_data(**changes: object) -> ReportData:
    base: dict[str, object] = {
        "losses": [0.5, 0.3, 0.2, 0.19, 0.19],
        "inputs": DIGITS[:3],
        "reconstructions": DIGITS[:3],
        "similarities": np.asarray([0.9, 0.95, 0.99], dtype=np.float32),
        "similarities_of": "held-out",
        "threshold": 0.9,
        "metric": "hamming",
        "shape": ImageShape(),
        "title": "test",
    }
    return ReportData(**{**base, **changes})  # type: ignore[arg-type]


def test_report_shows_held_out_loss_and_marks_the_kept_and_stopping_epochs() -> None:
    data = _report_data(holdout_losses=[0.6, 0.35, 0.3, 0.31, 0.32], kept_epoch=3, max_epochs=500)
    lines = _loss_axes_lines(data)
    assert _values(lines["held-out (early stopping)"].get_ydata()) == pytest.approx(
        [0.6, 0.35, 0.3, 0.31, 0.32]
    )
    assert _values(lines["training"].get_ydata()) == pytest.approx([0.5, 0.3, 0.2, 0.19, 0.19])
    assert _values(lines["kept: epoch 3"].get_xdata()) == [3.0, 3.0]
    assert _values(lines["stopped: epoch 5"].get_xdata()) == [5.0, 5.0]
    assert draw_report(data).axes[0].get_title() == "loss: stopped early at epoch 5 of 500"


def test_report_without_early_stopping_shows_the_training_loss_only() -> None:
    lines = _loss_axes_lines(_report_data(max_epochs=5))
    assert list(lines) == ["training"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pixelwatch train")
    configure_parser(parser)
    return parser.parse_args(["--data", "d", "--out", "m.onnx", *argv])


def test_batch_size_and_patience_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert options_from(parse()).batch_size == "auto"
    assert options_from(parse("--batch-size", "16", "--patience", "0")).batch_size == 16
    assert options_from(parse("--patience", "0")).patience == 0
    with pytest.raises(SystemExit):
        parse("--batch-size", "many")
    assert "not a whole number or auto: 'many'" in capsys.readouterr().err


def test_help_states_the_stopping_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert f"From {EARLY_STOPPING_MIN} images on, images are held out for early stopping" in text
    assert "the epoch and the threshold are chosen on the same held-out images" in text
    assert "without --fpr 10% of the images" in text
    assert "--batch-size auto is 1 below" in text


def test_a_plateau_first_lowers_the_learning_rate_then_stops() -> None:
    pixels = DIGITS[:400]
    plain = FitSettings(epochs=600, lr=0.02, batch_size=32, seed=1, patience=5)
    dropping = FitSettings(epochs=600, lr=0.02, batch_size=32, seed=1, patience=5, lr_drops=2)
    stopped = train("dense", ImageShape(), {}, pixels[:350], plain, holdout=pixels[350:])
    lowered = train("dense", ImageShape(), {}, pixels[:350], dropping, holdout=pixels[350:])
    # Identical up to the first plateau, where one stops and the other carries on.
    first = stopped.epochs_run
    assert lowered.losses[:first] == stopped.losses[:first]
    assert lowered.epochs_run >= first + 2 * 5
    assert min(lowered.holdout_losses) < min(stopped.holdout_losses)


def test_the_summary_says_where_training_stopped(
    digits_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    args = parse("--lr", "0.05", "--patience", "2", "--mode", "gray", "--no-progress")
    args.arch, args.metric = "dense", "hamming"  # the auto defaults print a line of their own
    args.data, args.out = str(digits_file), out
    assert run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    params = load_model(out).metadata.arch_params
    run_, kept = params["epochs_run"], params["epoch_kept"]
    assert lines[0] == (
        f"trained a dense autoencoder on 540 images ({run_} epochs, batch size "
        f"{auto_batch_size(540)}, lr 0.05, gray mode, seed 0)"
    )
    assert lines[5] == (
        f"epochs     stopped at epoch {run_} of {MAX_AUTO_EPOCHS}, kept epoch {kept} "
        "(best loss on 60 held-out images)"
    )
    assert lines[6].startswith("loss       ") and "held-out" in lines[6]
