"""Every architecture: builds, trains reproducibly, exports to the one ONNX contract, and is
scored by the runtime and the worker's batch logic exactly as the torch module scores."""

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from numpy.typing import NDArray
from sklearn.datasets import load_digits

from kafka_messages import kafka_message
from model_export import OptionError, TrainOptions, TrainResult, train_and_export
from model_export.architectures import (
    ARCHITECTURES,
    ArchitectureError,
    DenoisingAutoencoder,
    build_autoencoder,
    parse_params,
    resolve_params,
)
from model_export.command import configure_parser, options_from
from model_export.pipeline import MODES
from model_export.train import FitSettings, train
from service.dataplane.pipeline import BatchScorer
from service.scoring.images import ImageShape
from service.scoring.model import Mode, load_model
from service.scoring.similarity import METRICS

ARCHS = sorted(ARCHITECTURES)
SHAPE = ImageShape(8, 8)
TOLERANCE = 1e-5
# Small and quick: a few epochs on 48 digits; every architecture accepts `code`.
GIVEN = {"code": 3}


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = load_digits().images[:48].astype(np.float32) / 16.0
    path = tmp_path_factory.mktemp("arch-data") / "digits.npy"
    np.save(path, images)
    return path


@pytest.fixture(scope="module")
def export_arch(
    digits_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, Mode], TrainResult]:
    """`export_arch(name, mode)` trains and exports that architecture once per module."""
    results: dict[tuple[str, Mode], TrainResult] = {}

    def get(arch: str, mode: Mode) -> TrainResult:
        if (arch, mode) not in results:
            out = tmp_path_factory.mktemp("arch") / f"{arch}-{mode}.onnx"
            options = TrainOptions(
                arch=arch,
                arch_params=GIVEN,
                epochs=3,
                batch_size=16,
                seed=7,
                mode=mode,
                report=False,
            )
            results[arch, mode] = train_and_export(digits_file, out, options)
        return results[arch, mode]

    return get


@pytest.fixture(params=[(a, m) for a in ARCHS for m in MODES], ids="-".join)
def exported(
    request: pytest.FixtureRequest, export_arch: Callable[[str, Mode], TrainResult]
) -> TrainResult:
    return export_arch(*request.param)


def probe(rows: int = 29) -> NDArray[np.float32]:
    """Random gray images plus a blank, a full and a binary one."""
    vectors = np.random.default_rng(11).random((rows, SHAPE.size), dtype=np.float32)
    vectors[0], vectors[1] = 0.0, 1.0
    vectors[2] = vectors[2] > 0.5
    return vectors


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [ImageShape(8, 8), ImageShape(5, 7)])
def test_every_architecture_maps_flat_pixels_to_flat_pixels(arch: str, shape: ImageShape) -> None:
    network = build_autoencoder(arch, shape, {})
    pixels = torch.rand(3, shape.size)
    assert tuple(network(pixels).shape) == (3, shape.size)
    assert torch.isfinite(network.training_loss(pixels))


@pytest.mark.parametrize("arch", ARCHS)
def test_training_is_reproducible_for_a_seed(arch: str) -> None:
    pixels = load_digits().images[:16].reshape(16, 64).astype(np.float32) / 16.0
    settings = FitSettings(epochs=2, batch_size=8, seed=3)
    first = train(arch, SHAPE, {}, pixels, settings)
    again = train(arch, SHAPE, {}, pixels, settings)
    assert first.losses == again.losses and all(np.isfinite(first.losses))
    for (name, a), (_, b) in zip(
        first.autoencoder.state_dict().items(), again.autoencoder.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_onnx_graph_matches_the_torch_module(exported: TrainResult) -> None:
    pixels = probe()
    scored = load_model(exported.model_path).score(pixels)
    with torch.no_grad():
        reconstruction, *metrics = (t.numpy() for t in exported.graph(torch.from_numpy(pixels)))
    np.testing.assert_allclose(scored.reconstruction, reconstruction, rtol=0, atol=TOLERANCE)
    for name, expected in zip(METRICS, metrics, strict=True):
        np.testing.assert_allclose(scored.scores[name], expected, rtol=0, atol=TOLERANCE)


def test_metadata_names_the_architecture_and_all_its_parameters(exported: TrainResult) -> None:
    metadata = load_model(exported.model_path).metadata
    arch = metadata.arch
    assert metadata == exported.metadata
    assert metadata.arch_params == {
        **resolve_params(arch, GIVEN),
        "epochs": 3,
        "lr": 0.004,  # --lr auto: 0.001 x sqrt(16)
        "batch_size": 16,
        "seed": 7,
        "patience": 50,
        "epochs_run": 3,  # 48 images: too few to hold any out, so no early stopping
        "epoch_kept": 3,
    }
    assert metadata.arch_params["code"] == 3


def test_the_worker_batch_logic_scores_every_architecture(exported: TrainResult) -> None:
    model = load_model(exported.model_path)
    pixels = probe(5)
    records = [
        kafka_message(orjson.dumps({"pixels": row.tolist(), "id": f"i{i}"}), i)
        for i, row in enumerate(pixels)
    ]
    result = BatchScorer(model, scores_format="full").process(records)
    expected = model.score(pixels)
    assert result.dead == []
    outputs = [orjson.loads(value) for _, value in result.scores]
    assert [o["similarity"] for o in outputs] == pytest.approx(expected.similarity.tolist())
    assert [o["anomaly"] for o in outputs] == expected.anomaly.tolist()
    first = outputs[0]
    assert first["reconstruction"] == pytest.approx(expected.reconstruction[0].tolist(), abs=1e-6)


@pytest.mark.parametrize("noise", ["gaussian", "masking", "salt_pepper"])
def test_denoising_corrupts_only_while_training(noise: str) -> None:
    network = build_autoencoder("denoising", SHAPE, {"noise": noise, "level": 0.5})
    assert isinstance(network, DenoisingAutoencoder)
    pixels = torch.full((64, SHAPE.size), 0.5)
    torch.manual_seed(0)
    corrupted = network.corrupt(pixels)
    assert float(corrupted.min()) >= 0.0 and float(corrupted.max()) <= 1.0
    changed = float((corrupted != pixels).float().mean())
    assert 0.3 < changed <= 1.0
    if noise != "gaussian":
        assert set(np.unique(corrupted[corrupted != pixels].numpy()).tolist()) <= {0.0, 1.0}
    network.eval()
    assert torch.equal(network(pixels), network(pixels))  # scoring is deterministic


@pytest.mark.parametrize(
    ("arch", "params"),
    [
        ("sparse", {"penalty": "l1", "weight": 0.5}),
        ("sparse", {"penalty": "kl", "weight": 0.5}),
        ("contractive", {"weight": 0.5}),
        ("vae", {"beta": 5.0}),
    ],
)
def test_regularised_variants_add_their_penalty_to_the_reconstruction_error(
    arch: str, params: dict[str, object]
) -> None:
    torch.manual_seed(0)
    network = build_autoencoder(arch, SHAPE, params)
    pixels = torch.rand(8, SHAPE.size)
    error = torch.nn.functional.mse_loss(network(pixels), pixels)
    assert float(network.training_loss(pixels).detach()) > float(error.detach()) + 1e-4


def test_contractive_penalty_is_the_squared_frobenius_norm_of_the_encoder_jacobian() -> None:
    torch.manual_seed(0)
    network = build_autoencoder("contractive", SHAPE, {"weight": 1.0, "code": 3})
    pixels = torch.rand(4, SHAPE.size)
    error = torch.nn.functional.mse_loss(network(pixels), pixels)
    jacobians = torch.func.vmap(torch.func.jacrev(network.encoder))(pixels)  # [4, 3, 64]
    expected = float(jacobians.detach().square().sum(dim=(1, 2)).mean())
    penalty = network.training_loss(pixels).detach() - error.detach()
    assert float(penalty) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    ("arch", "pairs", "message"),
    [
        ("denoising", ["level=1.5"], "denoising: level must be a number between 0 and 1 (got 1.5)"),
        ("denoising", ["level=lots"], "denoising: level must be a number (got 'lots')"),
        ("sparse", ["penalty=l2"], "sparse: penalty must be one of l1, kl (got 'l2')"),
        ("conv", ["channels=0"], "conv: channels must be a whole number >= 1 (got 0)"),
        ("deep", ["depth=2.5"], "deep: depth must be a whole number (got '2.5')"),
        ("vae", ["beta"], "--arch-param 'beta': expected KEY=VALUE"),
        (
            "vae",
            ["noise=masking"],
            "vae: unknown parameter(s) noise (accepted: activation, beta, code, hidden)",
        ),
    ],
)
def test_bad_architecture_parameters_fail_with_one_clear_line(
    arch: str, pairs: list[str], message: str
) -> None:
    with pytest.raises(ArchitectureError) as caught:
        resolve_params(arch, parse_params(arch, pairs))
    assert str(caught.value) == message


def test_train_command_takes_the_architecture_and_its_parameters() -> None:
    parser = argparse.ArgumentParser(prog="pixelwatch train")
    configure_parser(parser)
    argv = ["--data", "d", "--out", "m", "--arch", "denoising", "--code", "5"]
    argv += ["--arch-param", "noise=masking", "--arch-param", "level=0.3"]
    options = options_from(parser.parse_args(argv))
    assert options.arch == "denoising"
    assert dict(options.arch_params) == {"noise": "masking", "level": 0.3, "code": 5}
    twice = parser.parse_args([*argv, "--arch-param", "code=6"])
    with pytest.raises(OptionError, match=r"^--code and --arch-param code=\.\.\. both given"):
        options_from(twice)
