"""Progress on long work: shown on a terminal, quiet with --no-progress and on pipes.

The terminal cases run the real commands with stderr on a pseudo-terminal; the quiet cases
run them with plain pipes.
"""

import io
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from sklearn.datasets import load_digits

from model_export.train import FitSettings, train
from service.progress import progress_bar
from service.scoring.images import ImageShape

DIGITS = (load_digits().images.astype(np.float32) / 16.0).reshape(-1, 64)
ENV = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}


def run_command(*args: str, terminal: bool) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `pixelwatch ARGS`, stderr on a pseudo-terminal or a pipe."""
    argv = [sys.executable, "-m", "service.cli", *args]
    if not terminal:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=ENV)
        return done.returncode, done.stdout, done.stderr
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the other side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, env=ENV
    ) as process:
        os.close(follower)
        out, _ = process.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(leader)
    return process.returncode, out.decode(), plain(b"".join(chunks))


def plain(raw: bytes) -> str:
    """Terminal output without its colour and cursor escape sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode(errors="replace"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("progress")
    paths = {"train": folder / "train.npy", "normal": folder / "n.npy", "odd": folder / "a.npy"}
    np.save(paths["train"], DIGITS[:300])
    np.save(paths["normal"], DIGITS[300:400])
    np.save(paths["odd"], 1.0 - DIGITS[400:450])
    return paths


def train_args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data["train"]), "--out", str(out), "--mode", "gray",
            "--arch", "dense", "--epochs", "4", *extra]  # fmt: skip


def test_training_on_a_terminal_shows_epoch_losses_and_time_left(
    data: dict[str, Path], tmp_path: Path
) -> None:
    code, out, err = run_command(*train_args(data, tmp_path / "m.onnx"), terminal=True)
    assert code == 0, err
    assert "training" in err and "epoch" in err and "4/4" in err
    assert "loss 0." in err and "held-out 0." in err and "ETA" in err
    assert out.startswith("trained a dense autoencoder")


@pytest.mark.parametrize("terminal", [True, False], ids=["no-progress", "pipe"])
def test_training_is_quiet_with_no_progress_or_on_a_pipe(
    data: dict[str, Path], tmp_path: Path, terminal: bool
) -> None:
    extra = ["--no-progress"] if terminal else []
    code, out, err = run_command(*train_args(data, tmp_path / "m.onnx", *extra), terminal=terminal)
    assert code == 0, err
    assert err == ""
    assert out.startswith("trained a dense autoencoder")


@pytest.fixture(scope="module")
def model(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m.onnx"
    code, _, err = run_command(*train_args(data, out, "--no-progress"), terminal=False)
    assert code == 0, err
    return out


def evaluate_args(data: dict[str, Path], model: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(model), "--normal", str(data["normal"]),
            "--anomalous", str(data["odd"]), *extra]  # fmt: skip


def test_evaluate_on_a_terminal_shows_its_progress(data: dict[str, Path], model: Path) -> None:
    code, out, err = run_command(*evaluate_args(data, model), terminal=True)
    assert code == 0, err
    assert "scoring" in err and "150/150 images" in err
    assert "AUROC" in out


@pytest.mark.parametrize("terminal", [True, False], ids=["no-progress", "pipe"])
def test_evaluate_is_quiet_with_no_progress_or_on_a_pipe(
    data: dict[str, Path], model: Path, terminal: bool
) -> None:
    extra = ["--no-progress"] if terminal else []
    code, out, err = run_command(*evaluate_args(data, model, *extra), terminal=terminal)
    assert (code, err) == (0, "")
    assert "AUROC" in out


def test_the_digits_benchmark_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "model_export.digits", "--archs", "dense", "--modes", "gray",
            "--classes", "1", "--repetitions", "1", "--epochs", "1", "--jobs", "1",
            "--protocol", "one-class"]  # fmt: skip
    shown = subprocess.run(
        [*argv, "--out", str(tmp_path / "a")], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert shown.returncode == 0 and shown.stderr == ""  # a pipe: quiet
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [*argv, "--out", str(tmp_path / "b")], stdout=subprocess.DEVNULL, stderr=follower, env=ENV
    ) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        assert process.wait(timeout=300) == 0
    os.close(leader)
    err = plain(b"".join(chunks))
    done = re.search(r"(\d+)/(\d+) runs", err.rsplit("training", 1)[-1])
    assert done is not None and done[1] == done[2] != "0" and "ETA" in err


def test_fit_reports_to_a_terminal_console_and_not_to_a_plain_one() -> None:
    settings = FitSettings(epochs=3, batch_size=32, progress=True, patience=5)
    shown, plain = io.StringIO(), io.StringIO()
    for file, terminal in ((shown, True), (plain, False)):
        console = Console(file=file, force_terminal=terminal, width=160)
        train("dense", ImageShape(), {}, DIGITS[:200], settings, DIGITS[200:250], console)
    assert "3/3" in shown.getvalue() and "held-out" in shown.getvalue()
    assert plain.getvalue() == ""


def test_a_disabled_bar_draws_nothing_even_on_a_terminal() -> None:
    file = io.StringIO()
    with progress_bar(enabled=False, console=Console(file=file, force_terminal=True)) as bar:
        bar.add_task("work", total=1, completed=1)
    assert file.getvalue() == ""
