"""Reference data in the model's metadata: golden images with their scores, and the similarity
histogram of normal images; and models without them, which must still load."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from sklearn.datasets import load_digits

from model_export import TrainOptions, train_and_export
from model_export.reference import golden_pixels
from service.errors import ModelError
from service.scoring.model import METADATA_PREFIX, load_model
from service.scoring.reference import HISTOGRAM_BINS, bin_index, histogram
from service.scoring.similarity import METRICS


def rewrite_props(source: Path, target: Path, change: dict[str, str | None]) -> Path:
    """A copy of `source` with some pixelwatch.* metadata replaced (None: removed)."""
    proto = onnx.load_model(str(source))
    props = {p.key: p.value for p in proto.metadata_props}
    for key, value in change.items():
        if value is None:
            props.pop(METADATA_PREFIX + key, None)
        else:
            props[METADATA_PREFIX + key] = value
    onnx.helper.set_model_props(proto, props)
    onnx.save_model(proto, str(target))
    return target


def test_the_golden_scores_are_what_the_runtime_computes_for_the_golden_images(
    seed_model_path: Path,
) -> None:
    model = load_model(seed_model_path)
    golden = model.metadata.golden
    assert golden is not None
    pixels = golden.array()
    assert pixels.shape == (4, 64)  # the two seed images, then two random ones
    scored = model.score(pixels)
    assert sorted(golden.scores) == sorted(METRICS)
    for metric in METRICS:
        assert golden.scores[metric] == scored.scores[metric].tolist()
    # Both verdicts are exercised: the seed images are normal, random noise mostly is not.
    assert not scored.anomaly[:2].any() and scored.anomaly[2:].any()


def test_without_a_held_out_split_the_histogram_is_the_training_images(
    seed_model_path: Path,
) -> None:
    model = load_model(seed_model_path)
    reference = model.metadata.reference
    assert reference is not None
    assert reference.source == "training" and reference.images == 2
    for metric in METRICS:
        counts = reference.of(metric)
        assert counts is not None and len(counts) == HISTOGRAM_BINS and counts.sum() == 2
    golden = model.metadata.golden
    assert golden is not None
    expected = histogram(np.asarray(golden.scores["hamming"][:2], dtype=np.float32))
    assert reference.of("hamming") == pytest.approx(expected)
    assert reference.fpr == 0.0


def test_with_fpr_calibration_the_histogram_is_the_held_out_images(tmp_path: Path) -> None:
    pixels = load_digits().images.astype(np.float32).reshape(-1, 64)[:300] / 16.0
    data = tmp_path / "digits.npy"
    np.save(data, pixels)
    options = TrainOptions(epochs=5, batch_size=32, mode="gray", fpr=0.1, report=False)
    result = train_and_export(data, tmp_path / "digits.onnx", options)

    model = load_model(result.model_path)
    reference = model.metadata.reference
    assert reference is not None and reference.source == "held-out"
    held_out = pixels[result.holdout_indices]
    assert reference.images == len(held_out) == 60
    scored = model.score(held_out)
    for metric in METRICS:
        assert reference.counts[metric] == histogram(scored.scores[metric]).tolist()
    assert reference.fpr == result.calibration.flagged / 60
    golden = model.metadata.golden
    assert golden is not None and len(golden.pixels) == 8
    # The normal golden images come from the held-out split.
    held = {tuple(row) for row in held_out.tolist()}
    assert all(tuple(row) in held for row in golden.pixels[:6])
    assert model.metadata == result.metadata


def test_large_images_keep_fewer_golden_images_but_at_least_two() -> None:
    normal = np.zeros((50, 128 * 128), dtype=np.float32)
    assert len(golden_pixels(normal, "gray", 0)) == 2
    assert len(golden_pixels(np.zeros((50, 64), np.float32), "binary", 0)) == 8
    noise = golden_pixels(np.zeros((3, 64), np.float32), "binary", 0)[-2:]
    assert set(np.unique(noise).tolist()) == {0.0, 1.0}


def test_a_model_exported_without_reference_data_still_loads(
    seed_model_path: Path, tmp_path: Path
) -> None:
    older = rewrite_props(
        seed_model_path, tmp_path / "older.onnx", {"golden": None, "reference": None}
    )
    metadata = load_model(older).metadata
    assert metadata.golden is None and metadata.reference is None
    assert metadata.threshold == load_model(seed_model_path).metadata.threshold


def test_damaged_reference_data_is_refused_with_one_line(
    seed_model_path: Path, tmp_path: Path
) -> None:
    props = load_model(seed_model_path).metadata.to_props()
    reference = json.loads(props[METADATA_PREFIX + "reference"])
    reference["counts"]["hamming"] = reference["counts"]["hamming"][:-1]
    broken = rewrite_props(
        seed_model_path, tmp_path / "broken.onnx", {"reference": json.dumps(reference)}
    )
    with pytest.raises(ModelError) as caught:
        load_model(broken)
    assert str(caught.value) == (
        f"{broken}: metadata reference: Value error, histogram for hamming has 99 bins, not 100"
    )
    garbled = rewrite_props(seed_model_path, tmp_path / "garbled.onnx", {"golden": "{not json"})
    with pytest.raises(ModelError, match=r"garbled.onnx: metadata golden: "):
        load_model(garbled)


def test_a_similarity_on_a_bin_edge_lands_in_the_bin_above_it() -> None:
    edges = np.array([0.0, 0.01, 0.25, 0.95, 0.99, 1.0], dtype=np.float32)
    assert bin_index(edges).tolist() == [0, 1, 25, 95, 99, 99]
    assert bin_index(np.nextafter(edges[1:], np.float32(0))).tolist() == [0, 24, 94, 98, 99]
