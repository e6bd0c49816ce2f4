"""Which model is live and which shadows it, from topic records and the model file, on real
models without a broker; the data plane is the `apply` callback."""

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from model_records import as_records
from service.config import Settings
from service.dataplane.pipeline import BatchScorer
from service.dataplane.shadow import ShadowScorer
from service.lifecycle.manager import Loaded, ModelLifecycle, NoModel
from service.lifecycle.registry import ModelRecord, publications, tombstone
from service.lifecycle.validate import Reason
from service.scoring.model import Model, load_model

Applied = list[tuple[str, str | None]]  # (live sha256, shadow sha256)


class Harness:
    """A lifecycle for model name `cams`, recording what it counts and applies."""

    def __init__(self, tmp_path: Path, model_file: Path | None = None) -> None:
        self.settings = Settings(model_name="cams", model=model_file or tmp_path / "none.onnx")
        self.counted: list[Reason | None] = []
        self.applied: Applied = []
        self.lifecycle = ModelLifecycle(
            self.settings, tmp_path / "cache", BatchScorer, self.counted.append
        )
        self.offset = 0

    def apply(self, live: BatchScorer, shadow: ShadowScorer | None) -> None:
        self.applied.append((live.model.sha256, shadow.sha256 if shadow else None))

    def start(self, records: list[ModelRecord], file_model: Path | None = None) -> None:
        loaded = None
        if file_model is not None:
            loaded = self.lifecycle.adopt_file(load_model(file_model))
        self.lifecycle.start(records, loaded)
        self.lifecycle.apply = self.apply

    def push(
        self, path: Path, role: Literal["live", "shadow"] = "live", data: bytes | None = None
    ) -> list[ModelRecord]:
        model = load_model(path)
        graph = path.read_bytes() if data is None else data
        published = publications(
            "cams",
            graph,
            "onnx",
            model=model,
            size=len(graph),
            role=role,
            action="push",
        )
        records = as_records(published, self.offset)
        self.offset += len(records)
        return records

    @property
    def live(self) -> Loaded:
        assert self.lifecycle.live is not None
        return self.lifecycle.live


@pytest.fixture(scope="module")
def v1(seed_model_path: Path) -> Model:
    return load_model(seed_model_path)


@pytest.fixture(scope="module")
def v2(candidate_model_path: Path, v1: Model) -> Model:
    model = load_model(candidate_model_path)
    assert model.version != v1.version and model.sha256 != v1.sha256
    return model


def corrupt(path: Path) -> bytes:
    return path.read_bytes()[:-100]  # the record still declares the sha256 of the whole file


def test_a_starting_worker_takes_the_newest_valid_model_and_counts_the_refused_one(
    tmp_path: Path, v1: Model, v2: Model
) -> None:
    h = Harness(tmp_path)
    records = h.push(v1.path) + h.push(v2.path) + h.push(v1.path, data=corrupt(v1.path))
    records = [r for r in records if r.role == "live" or r.offset != 4]  # v3's archive copy too
    h.start(records)
    assert h.live.sha256 == v2.sha256 and h.live.origin == "topic"
    assert h.counted == ["sha256", None]
    assert h.lifecycle.shadow is None


def test_without_a_model_on_the_topic_the_file_is_live_and_without_either_start_up_fails(
    tmp_path: Path, v1: Model
) -> None:
    h = Harness(tmp_path, v1.path)
    h.start([], v1.path)
    assert h.live.sha256 == v1.sha256 and h.live.origin == str(v1.path)
    empty = Harness(tmp_path / "empty")
    with pytest.raises(NoModel) as caught:
        empty.start(as_records([tombstone("cams")]))
    assert str(caught.value) == (
        f"no model to start with: {tmp_path / 'empty' / 'none.onnx'} does not exist and "
        "pixelwatch.models holds no valid model named cams (publish one with "
        "`pixelwatch model push MODEL.onnx`, or give --model PATH)"
    )


async def test_a_pushed_model_is_swapped_in_and_a_refused_one_leaves_the_live_one(
    tmp_path: Path, v1: Model, v2: Model
) -> None:
    h = Harness(tmp_path)
    h.start(h.push(v1.path))
    for record in h.push(v2.path, data=corrupt(v2.path)):
        await h.lifecycle.on_record(record)
    assert h.applied == [] and h.live.sha256 == v1.sha256
    for record in h.push(v2.path):
        await h.lifecycle.on_record(record)
    assert h.applied == [(v2.sha256, None)]
    for record in h.push(v2.path):  # the same model again: nothing to do
        await h.lifecycle.on_record(record)
    assert h.applied == [(v2.sha256, None)]
    assert h.counted == [None, "sha256", None]


async def test_the_topic_takes_precedence_over_a_changed_model_file(
    tmp_path: Path, v1: Model, v2: Model
) -> None:
    h = Harness(tmp_path, v2.path)
    h.start(h.push(v1.path), v2.path)
    assert h.live.sha256 == v1.sha256
    await h.lifecycle.on_file(v2.path.read_bytes())
    assert h.applied == [] and h.live.sha256 == v1.sha256
    assert h.lifecycle.file is not None and h.lifecycle.file.sha256 == v2.sha256


async def test_a_changed_model_file_is_validated_then_swapped_in(
    tmp_path: Path, v1: Model, v2: Model
) -> None:
    h = Harness(tmp_path, v1.path)
    h.start([], v1.path)
    await h.lifecycle.on_file(corrupt(v2.path))
    assert h.applied == [] and h.counted == [None, "corrupt"]
    await h.lifecycle.on_file(v2.path.read_bytes())
    assert h.applied == [(v2.sha256, None)] and h.live.origin == str(v1.path)


async def test_a_shadow_is_taken_removed_and_promoted_with_the_live_model_in_one_swap(
    tmp_path: Path, v1: Model, v2: Model
) -> None:
    h = Harness(tmp_path)
    h.start(h.push(v1.path) + h.push(v2.path, role="shadow"))
    assert h.lifecycle.shadow is not None and h.lifecycle.shadow.sha256 == v2.sha256
    shadow_model = h.lifecycle.shadow.model
    [gone] = as_records([tombstone("cams")], 50)
    await h.lifecycle.on_record(gone)
    assert h.applied == [(v1.sha256, None)]
    for record in h.push(v2.path, role="shadow"):
        await h.lifecycle.on_record(record)
    for record in h.push(v2.path):  # promotion: the shadow's model goes live
        await h.lifecycle.on_record(record)
    assert h.applied == [(v1.sha256, None), (v1.sha256, v2.sha256), (v2.sha256, None)]
    assert h.live.model is shadow_model, "the loaded shadow model is reused, not loaded again"


async def test_records_of_other_model_names_are_ignored(
    tmp_path: Path, v1: Model, v2: Model
) -> None:
    h = Harness(tmp_path)
    h.start(h.push(v1.path))
    [live] = [r for r in h.push(v2.path) if r.role == "live"]
    await h.lifecycle.on_record(dataclasses.replace(live, name="other", key="other"))
    assert h.applied == [] and h.live.sha256 == v1.sha256
