"""The exported scoring graph: parity with torch and numpy, dynamic batch, metadata."""

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from numpy.typing import NDArray
from onnx.external_data_helper import uses_external_data
from torch import nn

import service
from model_export import TrainOptions, TrainResult, train_and_export
from model_export.export import ExportError, ScoringGraph, export_scoring_graph, scoring_graph
from model_export.memory import kth_distances
from model_fixtures import SEED_TRAIN
from service.errors import ModelError
from service.scoring.images import ImageShape, read_images
from service.scoring.model import (
    FORMAT_VERSION,
    INPUT_NAME,
    METADATA_PREFIX,
    RECONSTRUCTION,
    Mode,
    ModelMetadata,
    load_model,
)
from service.scoring.similarity import (
    METRICS,
    RECONSTRUCTION_METRICS,
    REFERENCE,
    combined_similarity,
    memory_similarity,
)

SIZE = 64
TOLERANCE = 1e-5


def fixed_vectors(rows: int = 37) -> NDArray[np.float32]:
    """Random gray images plus the awkward ones: blank, full, and binary."""
    vectors = np.random.default_rng(20240601).random((rows, SIZE), dtype=np.float32)
    vectors[0] = 0.0
    vectors[1] = 1.0
    vectors[2] = vectors[2] > 0.5
    return vectors


# binary: the course's convention; gray with an identity output, so clamping has work to do
OPTIONS: dict[Mode, TrainOptions] = {
    "binary": TrainOptions(epochs=30, seed=1, mode="binary"),
    "gray": TrainOptions(epochs=30, seed=1, mode="gray", arch_params={"activation": "identity"}),
}


@pytest.fixture(scope="module")
def export_mode(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Mode], TrainResult]:
    """`export_mode(mode)` trains and exports that mode's model once per module."""
    results: dict[Mode, TrainResult] = {}

    def get(mode: Mode) -> TrainResult:
        if mode not in results:
            out = tmp_path_factory.mktemp("export") / f"{mode}.onnx"
            results[mode] = train_and_export(SEED_TRAIN, out, OPTIONS[mode])
        return results[mode]

    return get


@pytest.fixture(params=sorted(OPTIONS))
def exported(
    request: pytest.FixtureRequest, export_mode: Callable[[Mode], TrainResult]
) -> TrainResult:
    return export_mode(request.param)


def torch_outputs(result: TrainResult, pixels: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    with torch.no_grad():
        return [t.numpy() for t in result.graph(torch.from_numpy(pixels))]


def test_onnx_graph_matches_the_torch_wrapper(exported: TrainResult) -> None:
    pixels = fixed_vectors()
    scored = load_model(exported.model_path).score(pixels)
    reconstruction, *metrics = torch_outputs(exported, pixels)
    np.testing.assert_allclose(scored.reconstruction, reconstruction, rtol=0, atol=TOLERANCE)
    for name, expected in zip(METRICS, metrics, strict=True):
        np.testing.assert_allclose(scored.scores[name], expected, rtol=0, atol=TOLERANCE)


def test_graph_metrics_match_the_numpy_reference_on_its_own_reconstruction(
    exported: TrainResult,
) -> None:
    pixels = fixed_vectors()
    scored = load_model(exported.model_path).score(pixels)
    for name in RECONSTRUCTION_METRICS:
        expected = REFERENCE[name](pixels, scored.reconstruction)
        np.testing.assert_allclose(scored.scores[name], expected, rtol=0, atol=TOLERANCE)


def test_memory_metrics_follow_the_reference_maps_of_the_stored_codes(
    exported: TrainResult,
) -> None:
    pixels = fixed_vectors()
    scored = load_model(exported.model_path).score(pixels)
    bank = exported.graph.memory
    assert bank is not None
    info = exported.metadata.memory
    with torch.no_grad():
        codes = exported.autoencoder.encode(torch.from_numpy(pixels)).numpy()
    stored = bank.codes.numpy()
    distance = kth_distances(codes, stored, info.k)
    memory = memory_similarity(distance, info.scale)
    np.testing.assert_allclose(scored.scores["memory"], memory, rtol=0, atol=TOLERANCE)
    combined = combined_similarity(
        scored.scores["hamming"],
        scored.scores["memory"],
        reconstruction_mean=info.reconstruction_mean,
        reconstruction_spread=info.reconstruction_spread,
        memory_mean=info.memory_mean,
        memory_spread=info.memory_spread,
        offset=info.offset,
    )
    np.testing.assert_allclose(scored.scores["combined"], combined, rtol=0, atol=TOLERANCE)


def test_a_training_image_is_a_stored_code_and_scores_memory_one(exported: TrainResult) -> None:
    train = read_images(SEED_TRAIN, ImageShape(8, 8)).pixels
    scored = load_model(exported.model_path).score(np.concatenate([train, fixed_vectors()]))
    # 1 up to the float32 rounding of the expanded distance (see model_export.memory)
    np.testing.assert_allclose(scored.scores["memory"][: len(train)], 1.0, rtol=0, atol=1e-3)
    assert (scored.scores["memory"][len(train) :] < 1.0).all()
    info = exported.metadata.memory
    assert (info.codes, info.training_codes, info.k) == (len(train), len(train), 1)
    assert info.calibration == "leave-one-out" and info.calibration_images == len(train)


@pytest.mark.parametrize("rows", [1, 37])
def test_batch_size_is_dynamic(exported: TrainResult, rows: int) -> None:
    pixels = fixed_vectors()[-rows:]
    scored = load_model(exported.model_path).score(pixels)
    assert scored.reconstruction.shape == (rows, SIZE)
    assert all(scored.scores[name].shape == (rows,) for name in METRICS)
    alone = [load_model(exported.model_path).score(row[None]).similarity[0] for row in pixels]
    np.testing.assert_allclose(scored.similarity, alone, rtol=0, atol=TOLERANCE)


def _signature(value: onnx.ValueInfoProto) -> tuple[str, int, list[str | int]]:
    tensor = value.type.tensor_type
    return value.name, tensor.elem_type, [d.dim_param or d.dim_value for d in tensor.shape.dim]


def test_graph_signature_is_float32_pixels_in_and_named_outputs_with_a_symbolic_batch(
    exported: TrainResult,
) -> None:
    graph = onnx.load_model(str(exported.model_path)).graph
    [pixels] = [_signature(i) for i in graph.input]
    name, elem_type, (batch, width) = pixels
    assert (name, elem_type, width) == (INPUT_NAME, onnx.TensorProto.FLOAT, SIZE)
    assert isinstance(batch, str) and batch, "the batch dimension should be symbolic"
    assert [_signature(o) for o in graph.output] == [
        (RECONSTRUCTION, onnx.TensorProto.FLOAT, [batch, SIZE]),
        *((m, onnx.TensorProto.FLOAT, [batch]) for m in METRICS),
    ]


def test_model_is_one_self_contained_file(exported: TrainResult) -> None:
    proto = onnx.load_model(str(exported.model_path), load_external_data=False)
    assert not any(uses_external_data(t) for t in proto.graph.initializer)
    assert proto.graph.initializer, "the weights should be inside the graph"
    siblings = sorted(p.name for p in exported.model_path.parent.iterdir())
    stem = exported.model_path.stem
    assert siblings == [f"{stem}.onnx", f"{stem}.report.png"]


def test_metadata_round_trips_through_the_file(exported: TrainResult) -> None:
    metadata = load_model(exported.model_path).metadata
    assert metadata == exported.metadata
    assert metadata.format_version == FORMAT_VERSION
    assert metadata.pixelwatch_version == service.__version__
    assert metadata.training_sha256 == hashlib.sha256(SEED_TRAIN.read_bytes()).hexdigest()
    assert metadata.final_loss == exported.losses[-1]
    assert metadata.arch_params["hidden"] == 16 and metadata.arch_params["code"] == 4
    assert abs((datetime.now(UTC) - metadata.created_at).total_seconds()) < 600


def _save_with_props(source: Path, target: Path, change: dict[str, str | None]) -> Path:
    proto = onnx.load_model(str(source))
    props = {p.key: p.value for p in proto.metadata_props}
    for key, value in change.items():
        if value is None:
            del props[METADATA_PREFIX + key]
        else:
            props[METADATA_PREFIX + key] = value
    onnx.helper.set_model_props(proto, props)
    onnx.save_model(proto, str(target))
    return target


def test_load_model_refuses_a_missing_metadata_key(exported: TrainResult, tmp_path: Path) -> None:
    broken = _save_with_props(exported.model_path, tmp_path / "broken.onnx", {"threshold": None})
    with pytest.raises(ModelError) as caught:
        load_model(broken)
    assert str(caught.value) == f"{broken}: model metadata is missing threshold"


def test_a_model_from_before_the_memory_bank_is_refused_in_one_line(
    exported: TrainResult, tmp_path: Path
) -> None:
    old = _save_with_props(
        exported.model_path, tmp_path / "old.onnx", {"format_version": "1", "memory": None}
    )
    with pytest.raises(ModelError) as caught:
        load_model(old)
    assert str(caught.value) == (
        f"{old}: metadata format_version: format version 1 is not supported (this build "
        f"reads {FORMAT_VERSION}); retrain the model with this version's `pixelwatch train`"
    )


def test_a_graph_without_a_memory_bank_is_not_exported(tmp_path: Path) -> None:
    metadata = halves_metadata(scoring_graph(KeepFirstHalf(), "gray", fixed_vectors()[:8]))
    bare = ScoringGraph(KeepFirstHalf(), "gray")
    with pytest.raises(ExportError, match="has no memory bank"):
        export_scoring_graph(bare, SIZE, metadata, tmp_path / "no-memory.onnx")
    assert not (tmp_path / "no-memory.onnx").exists()


def test_load_model_refuses_an_incompatible_format_version(
    exported: TrainResult, tmp_path: Path
) -> None:
    future = _save_with_props(
        exported.model_path, tmp_path / "future.onnx", {"format_version": "99"}
    )
    with pytest.raises(ModelError) as caught:
        load_model(future)
    message = str(caught.value)
    assert message.startswith(f"{future}: metadata format_version")
    assert f"format version 99 is not supported (this build reads {FORMAT_VERSION})" in message


def test_gray_mode_clamps_the_reconstruction_to_the_unit_interval(
    export_mode: Callable[[Mode], TrainResult],
) -> None:
    result = export_mode("gray")
    pixels = fixed_vectors()
    with torch.no_grad():
        raw = result.autoencoder(torch.from_numpy(pixels)).numpy()
    assert raw.min() < 0.0 and raw.max() > 1.0, "the identity output should leave [0, 1]"
    reconstruction = load_model(result.model_path).score(pixels).reconstruction
    assert reconstruction.min() >= 0.0 and reconstruction.max() <= 1.0
    np.testing.assert_allclose(reconstruction, np.clip(raw, 0.0, 1.0), rtol=0, atol=TOLERANCE)


class KeepFirstHalf(nn.Module):
    """A stand-in network that blanks the second half of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor
        self.register_buffer("mask", (torch.arange(SIZE) < SIZE // 2).float())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels * self.mask

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels[:, SIZE // 2 :]


def halves_metadata(graph: ScoringGraph) -> ModelMetadata:
    return ModelMetadata(
        format_version=FORMAT_VERSION,
        width=8,
        height=8,
        mode="gray",
        metric="cosine",
        threshold=0.5,
        training_sha256="0" * 64,
        pixelwatch_version=service.__version__,
        created_at=datetime.now(UTC),
        final_loss=0.0,
        memory=graph.memory_info,
    )


def test_graph_metrics_follow_the_reference_for_blank_images(tmp_path: Path) -> None:
    graph = scoring_graph(KeepFirstHalf(), "gray", fixed_vectors()[:8])
    path = tmp_path / "halves.onnx"
    export_scoring_graph(graph, SIZE, halves_metadata(graph), path)
    pixels = np.zeros((4, SIZE), dtype=np.float32)
    pixels[1, SIZE // 2 :] = 0.5  # reconstructed blank: only one image is blank
    pixels[2, : SIZE // 2] = 0.25  # reconstructed exactly
    pixels[3] = fixed_vectors()[3]
    scored = load_model(path).score(pixels)
    expected = {
        "hamming": [1.0, 0.75, 1.0],
        "ruzicka": [1.0, 0.0, 1.0],
        "dice": [1.0, 0.0, 1.0],
        "cosine": [1.0, 0.0, 1.0],
    }
    for name in RECONSTRUCTION_METRICS:
        np.testing.assert_allclose(scored.scores[name][:3], expected[name], rtol=0, atol=TOLERANCE)
        reference = REFERENCE[name](pixels, scored.reconstruction)
        np.testing.assert_allclose(scored.scores[name], reference, rtol=0, atol=TOLERANCE)
