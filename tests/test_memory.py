"""The memory bank: coreset selection, k-th nearest distances, the fitted maps, and the
`train` options that size it."""

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from numpy.typing import NDArray
from pydantic import ValidationError
from sklearn.datasets import load_digits

from model_export import OptionError, TrainOptions, train_and_export
from model_export.command import configure_parser, options_from
from model_export.memory import (
    MemoryBankError,
    MemorySettings,
    fit_memory,
    greedy_coreset,
    kth_distances,
)
from model_fixtures import SEED_TEST, SEED_TRAIN, seed_model_path  # noqa: F401
from service.cli import main as cli
from service.config import Settings
from service.scoring.model import load_model


def points(count: int = 200, seed: int = 5) -> NDArray[np.float32]:
    return np.random.default_rng(seed).normal(size=(count, 3)).astype(np.float32)


def identity(pixels: torch.Tensor) -> torch.Tensor:
    return pixels


def darkness(pixels: torch.Tensor) -> torch.Tensor:
    """A stand-in reconstruction similarity: 1 - mean pixel."""
    return 1.0 - pixels.mean(dim=1)


def covering_radius(codes: NDArray[np.float32], chosen: NDArray[np.intp]) -> float:
    return float(kth_distances(codes, codes[chosen], 1).max())


def test_greedy_coreset_is_deterministic_for_a_seed_and_sorted() -> None:
    codes = points()
    first = greedy_coreset(codes, 20, seed=3)
    assert first.tolist() == greedy_coreset(codes, 20, seed=3).tolist()
    assert len(first) == 20 and (np.diff(first) > 0).all()
    assert greedy_coreset(codes, 20, seed=4).tolist() != first.tolist()


def test_greedy_coreset_keeps_its_codes_farther_apart_than_its_covering_radius() -> None:
    # Farthest-point selection: each added code was the farthest from those before it, so
    # chosen codes are pairwise at least the final covering radius apart.
    codes = points()
    chosen = greedy_coreset(codes, 25, seed=0)
    radius = covering_radius(codes, chosen)
    pairwise = kth_distances(codes[chosen], codes[chosen], 1, stored_rows=np.arange(25))
    assert pairwise.min() >= radius
    assert covering_radius(codes, greedy_coreset(codes, 50, seed=0)) < radius


def test_greedy_coreset_keeps_everything_when_it_fits_and_stops_at_distinct_codes() -> None:
    codes = points(30)
    assert greedy_coreset(codes, 30, seed=0).tolist() == list(range(30))
    repeated = np.repeat(codes[:3], 4, axis=0)
    assert len(greedy_coreset(repeated, 10, seed=0)) == 3


def test_kth_distance_leaves_a_stored_code_out_when_asked() -> None:
    codes = np.asarray([[0.0], [1.0], [3.0]], dtype=np.float32)
    assert kth_distances(codes, codes, 1).tolist() == [0.0, 0.0, 0.0]
    rows = np.arange(3)
    assert kth_distances(codes, codes, 1, stored_rows=rows).tolist() == [1.0, 1.0, 2.0]
    assert kth_distances(codes, codes, 2, stored_rows=rows).tolist() == [3.0, 2.0, 3.0]
    assert np.isinf(kth_distances(codes, codes, 3, stored_rows=rows)).all()


@pytest.mark.parametrize("k", [1, 3])
def test_the_graph_module_measures_the_same_kth_distance_as_the_reference(k: int) -> None:
    train, probe = points(120, 1), points(40, 2) * 2.0
    bank = fit_memory(identity, darkness, train, None, MemorySettings(codes=60, k=k))
    with torch.no_grad():
        measured = bank.distance(torch.from_numpy(probe)).numpy()
    stored = bank.codes.numpy()
    np.testing.assert_allclose(measured, kth_distances(probe, stored, k), rtol=1e-5, atol=1e-5)
    assert bank.info.codes == 60 and bank.info.training_codes == 120 and bank.info.k == k


@pytest.mark.parametrize("held_out", [True, False])
def test_the_default_threshold_flags_about_one_percent_of_the_calibration_images(
    held_out: bool,
) -> None:
    train, calibration = points(400, 1), points(500, 2)
    chosen = calibration if held_out else None
    bank = fit_memory(identity, darkness, train, chosen, MemorySettings(codes=100))
    assert bank.info.calibration == ("held-out" if held_out else "leave-one-out")
    assert bank.info.calibration_images == (500 if held_out else 400)
    probe = calibration if held_out else train
    with torch.no_grad():
        memory, combined = bank(torch.from_numpy(probe), darkness(torch.from_numpy(probe)))
    if held_out:  # leave-one-out distances are not what the graph sees for stored codes
        assert 0.0 < float((memory < 0.6).float().mean()) <= 0.012
        assert 0.0 < float((combined < 0.6).float().mean()) <= 0.012
    assert float(memory.max()) <= 1.0 and float(combined.min()) > 0.0


def test_a_lone_training_image_still_gets_a_memory_bank() -> None:
    lone = points(1)
    bank = fit_memory(identity, darkness, lone, None, MemorySettings(k=5))
    assert (bank.info.codes, bank.info.k, bank.info.scale) == (1, 1, 1.0)
    with torch.no_grad():
        memory, _ = bank(torch.from_numpy(lone), darkness(torch.from_numpy(lone)))
    assert memory.tolist() == [1.0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"codes": 0}, "--memory-size must be a whole number >= 1 (got 0)"),
        ({"k": 0}, "--memory-k must be a whole number >= 1 (got 0)"),
    ],
)
def test_bad_memory_settings_are_refused_in_one_line(
    settings: dict[str, int], message: str
) -> None:
    with pytest.raises(MemoryBankError) as caught:
        MemorySettings(codes=settings.get("codes", 1), k=settings.get("k", 1))
    assert str(caught.value) == message
    with pytest.raises(OptionError) as again:
        TrainOptions(**{f"memory_{'size' if 'codes' in settings else 'k'}": 0})  # type: ignore[arg-type]
    assert str(again.value) == message


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = load_digits().images[:300].astype(np.float32) / 16.0
    path = tmp_path_factory.mktemp("memory-data") / "digits.npy"
    np.save(path, images)
    return path


def bank_shape(model: Path) -> list[int]:
    """[stored codes, code size]: the graph's one constant of stored codes (kept transposed)."""
    graph = onnx.load_model(str(model)).graph
    [bank] = [t for t in graph.initializer if t.name == "memory.stored"]
    code, count = bank.dims
    return [count, code]


def test_train_stores_a_coreset_of_memory_size_codes_inside_the_graph(
    digits_file: Path, tmp_path: Path
) -> None:
    base = TrainOptions(epochs=3, batch_size=32, mode="gray", report=False)
    small = train_and_export(digits_file, tmp_path / "small.onnx", base)
    tiny = dataclasses.replace(base, memory_size=16, memory_k=3)
    coreset = train_and_export(digits_file, tmp_path / "coreset.onnx", tiny)
    # Every image but the --fpr hold-out (none here): early-stopping images are normal too.
    assert bank_shape(small.model_path) == [300, 4]
    assert bank_shape(coreset.model_path) == [16, 4]
    info = load_model(coreset.model_path).metadata.memory
    assert (info.codes, info.training_codes, info.k, info.calibration) == (
        16,
        300,
        3,
        "leave-one-out",
    )
    assert coreset.model_path.stat().st_size < small.model_path.stat().st_size


def test_train_calibrates_the_memory_maps_on_the_held_out_images_with_fpr(
    digits_file: Path, tmp_path: Path
) -> None:
    options = TrainOptions(
        epochs=3, batch_size=32, mode="gray", metric="memory", fpr=0.05, report=False
    )
    result = train_and_export(digits_file, tmp_path / "fpr.onnx", options)
    model = load_model(result.model_path)
    info = model.metadata.memory
    assert (info.calibration, info.calibration_images) == ("held-out", 60)
    assert info.training_codes == 240
    held_out = model.score(load_digits().images[:300].reshape(300, 64)[result.holdout_indices] / 16)
    assert held_out.metric == "memory"
    assert int(held_out.anomaly.sum()) == result.calibration.flagged == 3


def test_train_command_takes_the_memory_options() -> None:
    parser = argparse.ArgumentParser(prog="pixelwatch train")
    configure_parser(parser)
    argv = ["--data", "d", "--out", "m", "--metric", "combined"]
    options = options_from(parser.parse_args([*argv, "--memory-size", "64", "--memory-k", "2"]))
    assert (options.metric, options.memory_size, options.memory_k) == ("combined", 64, 2)
    defaults = options_from(parser.parse_args(argv))
    assert (defaults.memory_size, defaults.memory_k) == (1024, 1)


def test_memory_and_combined_are_chosen_like_any_metric(
    seed_model_path: Path,  # noqa: F811 - pytest injects the fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # score --metric
    command = [sys.executable, "-m", "service.cli", "score", "--model", str(seed_model_path)]
    result = subprocess.run(
        [*command, "--json", "--metric", "memory", str(SEED_TEST)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["metric"] for r in rows] == ["memory"] * 4
    assert [r["similarity"] for r in rows] == [r["scores"]["memory"] for r in rows]
    # train --metric (the threshold then applies to that metric)
    out = tmp_path / "combined.onnx"
    argv = ["train", "--data", str(SEED_TRAIN), "--out", str(out), "--epochs", "20"]
    assert cli([*argv, "--metric", "combined", "--threshold", "0.3", "--no-progress"]) == 0
    metadata = load_model(out).metadata
    assert (metadata.metric, metadata.threshold) == ("combined", 0.3)
    # PIXELWATCH_METRIC
    monkeypatch.setenv("PIXELWATCH_METRIC", "memory")
    assert Settings().metric == "memory"
    monkeypatch.setenv("PIXELWATCH_METRIC", "memories")
    with pytest.raises(ValidationError, match="'memory' or 'combined'"):
        Settings()


def first_two(pixels: torch.Tensor) -> torch.Tensor:
    """A stand-in encoder: two of the three coordinates."""
    return pixels[:, :2]


def halves(pixels: torch.Tensor) -> torch.Tensor:
    """A stand-in first layer: each point's coordinates, doubled."""
    return 2.0 * pixels


def test_a_bank_with_first_layers_measures_the_geometric_mean_of_both_distances() -> None:
    train, probe = points(120, 1), points(40, 2) * 2.0
    code = first_two
    settings = MemorySettings(codes=60, features="code+first-layer")
    bank = fit_memory(code, darkness, train, None, settings, first_layer=halves)
    assert bank.info.features == "code+first-layer" and bank.first_bank is not None
    stored_codes, stored_first = bank.codes.numpy(), bank.first_bank.points.numpy()
    with torch.no_grad():
        tensor = torch.from_numpy(probe)
        measured = bank.distance(code(tensor), halves(tensor)).numpy()
        with pytest.raises(MemoryBankError, match="also needs the images' first layers"):
            bank.distance(code(tensor))
    expected = np.sqrt(
        kth_distances(probe[:, :2], stored_codes, 1) * kth_distances(2.0 * probe, stored_first, 1)
    )
    np.testing.assert_allclose(measured, expected, rtol=1e-4, atol=1e-4)
    # The same rows are stored of both: the first layers are those of the stored codes' images.
    rows = [int(np.abs(train[:, :2] - c).sum(axis=1).argmin()) for c in stored_codes]
    np.testing.assert_allclose(stored_first, 2.0 * train[rows], rtol=1e-5, atol=1e-5)
    # A code-only bank of the same images measures another distance.
    plain = fit_memory(code, darkness, train, None, MemorySettings(codes=60))
    assert plain.first_bank is None and plain.info.features == "code"
    with torch.no_grad():
        assert not np.allclose(plain.distance(code(tensor)).numpy(), measured)


def test_memory_features_other_than_the_two_are_refused_in_one_line() -> None:
    with pytest.raises(MemoryBankError) as caught:
        MemorySettings(features="pixels")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "--memory-features must be one of code, code+first-layer (got 'pixels')"
    )
    with pytest.raises(OptionError, match="--memory-features must be one of"):
        TrainOptions(memory_features="pixels")  # type: ignore[arg-type]


def test_train_stores_first_layers_in_the_graph_and_onnx_scores_as_torch(
    digits_file: Path, tmp_path: Path
) -> None:
    parser = argparse.ArgumentParser(prog="pixelwatch train")
    configure_parser(parser)
    argv = ["--data", str(digits_file), "--out", str(tmp_path / "m.onnx"), "--arch", "conv"]
    argv += ["--code", "16", "--metric", "memory", "--memory-features", "code+first-layer"]
    options = dataclasses.replace(
        options_from(parser.parse_args(argv)), epochs=3, batch_size=32, report=False
    )
    assert options.memory_features == "code+first-layer"
    result = train_and_export(digits_file, tmp_path / "m.onnx", options)
    model = load_model(result.model_path)
    assert model.metadata.memory.features == "code+first-layer"
    # conv's first layer: 8 feature maps of 8x8 per stored image, beside the 16-wide codes.
    graph = onnx.load_model(str(result.model_path)).graph
    [first] = [t for t in graph.initializer if t.name == "memory.first_bank.stored"]
    assert list(first.dims) == [8 * 64, 300]
    assert bank_shape(result.model_path) == [300, 16]
    images = (load_digits().images[300:340].reshape(40, 64) / 16).astype(np.float32)
    with torch.no_grad():
        *_, memory, _ = result.graph(torch.from_numpy(images))
    np.testing.assert_allclose(model.score(images).similarity, memory.numpy(), atol=1e-4)


def test_an_architecture_without_a_first_layer_cannot_store_one(
    digits_file: Path, tmp_path: Path
) -> None:
    options = TrainOptions(
        epochs=1, batch_size=64, arch="seq2seq", memory_features="code+first-layer", report=False
    )
    with pytest.raises(Exception, match="no first layer of features to store"):
        train_and_export(digits_file, tmp_path / "s.onnx", options)


def test_a_codes_only_bank_is_written_as_before_features_existed(
    seed_model_path: Path,  # noqa: F811 - pytest injects the fixture
) -> None:
    # Workers that predate --memory-features refuse unknown keys: a default model must not
    # carry one, and a model that stores first layers says so.
    metadata = load_model(seed_model_path).metadata
    assert metadata.memory.features == "code"
    assert "features" not in json.loads(metadata.to_props()["pixelwatch.memory"])
    first = metadata.memory.model_copy(update={"features": "code+first-layer"})
    assert json.loads(first.model_dump_json())["features"] == "code+first-layer"
