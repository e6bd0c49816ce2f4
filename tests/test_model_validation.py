"""The checks a model passes before it may score, each refusal with its reason."""

import json
from pathlib import Path

import pytest

from service.lifecycle.registry import sha256_of
from service.lifecycle.validate import Refused, self_test, validate
from service.scoring.images import ImageShape
from service.scoring.model import FORMAT_VERSION, METADATA_PREFIX, load_model
from service.scoring.similarity import METRICS
from test_model_reference import rewrite_props


def refusal(data: bytes, cache: Path, **kwargs: object) -> Refused:
    with pytest.raises(Refused) as caught:
        validate(data, cache=cache, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_a_valid_model_passes_and_is_kept_under_its_sha256(
    seed_model_path: Path, tmp_path: Path
) -> None:
    data = seed_model_path.read_bytes()
    validated = validate(data, sha256=sha256_of(data), cache=tmp_path, shape=ImageShape(8, 8))
    assert validated.model.path == tmp_path / f"{sha256_of(data)}.onnx"
    assert validated.model.path.read_bytes() == data
    assert validated.model.sha256 == sha256_of(data)
    assert validated.self_test == f"passed (4 golden images, {len(METRICS)} metrics)"
    assert [p.name for p in tmp_path.iterdir()] == [f"{sha256_of(data)}.onnx"]  # no leftovers


def test_bytes_that_do_not_hash_to_the_declared_sha256_are_refused(
    seed_model_path: Path, tmp_path: Path
) -> None:
    data = seed_model_path.read_bytes()
    refused = refusal(data[:-10], tmp_path, sha256=sha256_of(data))
    assert refused.reason == "sha256"
    assert sha256_of(data) in refused.text
    assert not list(tmp_path.iterdir()), "nothing is cached before the hash matches"


def test_bytes_that_are_no_onnx_graph_are_refused_as_corrupt(tmp_path: Path) -> None:
    data = b"\x08\x07garbage that is no protobuf at all"
    refused = refusal(data, tmp_path, sha256=sha256_of(data))
    assert refused.reason == "corrupt"
    assert refused.text.startswith("not a loadable ONNX graph (")


def test_an_unknown_format_version_is_refused(seed_model_path: Path, tmp_path: Path) -> None:
    future = rewrite_props(seed_model_path, tmp_path / "future.onnx", {"format_version": "99"})
    refused = refusal(future.read_bytes(), tmp_path / "cache", sha256=None)
    assert refused.reason == "format"
    assert refused.text == f"format version 99 (this build reads {FORMAT_VERSION})"


def test_invalid_metadata_is_refused_without_naming_the_cache_file(
    seed_model_path: Path, tmp_path: Path
) -> None:
    broken = rewrite_props(seed_model_path, tmp_path / "broken.onnx", {"threshold": "1.5"})
    refused = refusal(broken.read_bytes(), tmp_path / "cache", sha256=None)
    assert refused.reason == "metadata"
    assert refused.text.startswith("metadata threshold: ")
    assert str(tmp_path) not in refused.text


def test_a_version_other_than_the_record_says_is_refused(
    seed_model_path: Path, tmp_path: Path
) -> None:
    refused = refusal(
        seed_model_path.read_bytes(), tmp_path, sha256=None, version="20990101T000000Z"
    )
    assert refused.reason == "metadata"
    assert "the record says version 20990101T000000Z" in refused.text


def test_a_model_for_another_image_size_than_the_input_is_refused(
    seed_model_path: Path, tmp_path: Path
) -> None:
    refused = refusal(seed_model_path.read_bytes(), tmp_path, sha256=None, shape=ImageShape(4, 4))
    assert refused.reason == "size"
    assert refused.text == "it takes 8x8 images, the input has 4x4"


def test_golden_images_that_no_longer_score_as_at_export_fail_the_self_test(
    seed_model_path: Path, tmp_path: Path
) -> None:
    props = load_model(seed_model_path).metadata.to_props()
    golden = json.loads(props[METADATA_PREFIX + "golden"])
    golden["scores"]["ruzicka"][1] += 0.01
    tampered = rewrite_props(
        seed_model_path, tmp_path / "tampered.onnx", {"golden": json.dumps(golden)}
    )
    refused = refusal(tampered.read_bytes(), tmp_path / "cache", sha256=None)
    assert refused.reason == "self_test"
    assert refused.text.startswith("ruzicka of golden image 1 is ")
    assert refused.text.endswith("(tolerance 0.0001)")


def test_a_model_without_golden_images_passes_with_no_reference(
    seed_model_path: Path, tmp_path: Path
) -> None:
    older = rewrite_props(seed_model_path, tmp_path / "older.onnx", {"golden": None})
    validated = validate(older.read_bytes(), sha256=None, cache=tmp_path / "cache")
    assert validated.self_test == "no reference (the model has no golden images)"
    assert self_test(load_model(older)) == validated.self_test
