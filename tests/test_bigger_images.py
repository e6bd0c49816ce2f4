"""Images bigger than the course's 8x8: 28x28 and 64x64, trained, scored and streamed.

The images are scikit-learn's digits scaled up (nearest neighbour), so nothing is downloaded;
the zeros are the anomalies. What is checked is that nothing sized for 8x8 stands in the way:
the message size limit scales with the model, full-precision JSON and binary batches of 50
images are scored, and the anomalies topic carries every pixel.
"""

import functools
import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from numpy.typing import NDArray
from sklearn.datasets import load_digits

from conftest import StartWorker
from kafka_messages import kafka_message
from model_export import TrainOptions, train_and_export
from service.dataplane.pipeline import BatchScorer, default_max_message_bytes
from service.schemas import HEADER_FORMAT, HEADER_REASON
from service.scoring.images import ImageShape
from service.scoring.model import load_model
from worker_harness import WorkerTopics, consume_until, produce

SIZES = (28, 64)


def digits(size: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(normal images: every digit but 0, anomalies: the zeros), `size` x `size`, in [0, 1]."""
    data = load_digits()
    pick = np.arange(size) * 8 // size
    images = (data.images[:, pick][:, :, pick] / 16.0).astype(np.float32)
    return images[data.target != 0], images[data.target == 0]


@functools.cache
def _trained(size: int, base: Path) -> Path:
    normal, _ = digits(size)
    directory = base / f"model{size}"
    directory.mkdir()
    np.save(directory / "normal.npy", normal[:600])
    options = TrainOptions(
        epochs=15, mode="gray", width=size, height=size, arch="dense", fpr=0.05, report=False
    )
    return train_and_export(directory / "normal.npy", directory / "model.onnx", options).model_path


@pytest.fixture(scope="module", params=SIZES, ids=[f"{s}x{s}" for s in SIZES])
def sized_model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, Path]:
    size = int(request.param)
    return size, _trained(size, tmp_path_factory.getbasetemp())


def test_the_size_limit_keeps_64_kib_at_8x8_and_grows_with_the_pixel_count() -> None:
    assert default_max_message_bytes(ImageShape(8, 8)) == 65_536
    assert default_max_message_bytes(ImageShape(28, 28)) == 16 * 32 * 784
    assert default_max_message_bytes(ImageShape(64, 64)) == 16 * 32 * 4096
    # Not fixed: a wide image gets room for its own pixels.
    assert default_max_message_bytes(ImageShape(128, 64)) == 2 * default_max_message_bytes(
        ImageShape(64, 64)
    )


@pytest.mark.slow
def test_a_model_of_each_size_scores_full_precision_json_exactly_as_its_arrays(
    sized_model: tuple[int, Path],
) -> None:
    size, path = sized_model
    model = load_model(path)
    assert (model.shape.width, model.shape.height) == (size, size)
    normal, zeros = digits(size)
    # Moved off 0 and 1 in float32: as float64 text each pixel takes its longest form, as a
    # producer serialising float32 arrays writes them (64x64 of it exceeds 64 KiB).
    images = np.concatenate([normal[-40:], zeros[:40]]).reshape(80, -1)
    images = images * np.float32(0.998) + np.float32(0.001)
    scorer = BatchScorer(model)
    assert scorer.decoder.max_message_bytes == default_max_message_bytes(model.shape)
    values = [json.dumps({"pixels": i.astype(np.float64).tolist()}).encode() for i in images]
    assert max(map(len, values)) > 65_536 or size < 64
    result = scorer.process([kafka_message(v, offset=i) for i, v in enumerate(values)])
    assert result.dead == [] and result.scored == 80
    expected = model.score(images, metric=scorer.metric, threshold=scorer.threshold)
    np.testing.assert_array_equal(result.similarity, expected.similarity)


@pytest.mark.kafka
@pytest.mark.slow
async def test_a_worker_of_each_size_answers_binary_batches_of_50_and_publishes_every_pixel(
    sized_model: tuple[int, Path],
    kafka_bootstrap: str,
    start_worker: StartWorker,
    topics: WorkerTopics,
) -> None:
    size, path = sized_model
    normal, zeros = digits(size)
    # Cosine below 1.0 (a gray reconstruction is never exact) flags all 50, so every anomaly
    # record is checked.
    worker = start_worker(
        PIXELWATCH_MODEL=str(path), PIXELWATCH_METRIC="cosine", PIXELWATCH_THRESHOLD="1.0"
    )
    worker.wait_serving()
    batch = np.concatenate([normal[-45:], zeros[:5]])  # 50 images in one u8 message
    value = np.rint(batch.reshape(50, -1) * 255).astype(np.uint8).tobytes()
    await produce(kafka_bootstrap, topics.images, [(b"big", value, [(HEADER_FORMAT, b"u8")])])
    records = await consume_until(
        kafka_bootstrap,
        [topics.scores, topics.anomalies],
        lambda r: len(r[topics.scores]) >= 50 and len(r[topics.anomalies]) >= 50,
        timeout=120,
        alive=worker.alive,
    )
    assert len(records[topics.scores]) == len(records[topics.anomalies]) == 50
    for record in records[topics.anomalies]:
        anomaly = orjson.loads(record.value)
        assert len(anomaly["pixels"]) == size * size == len(anomaly["reconstruction"])


@pytest.mark.kafka
@pytest.mark.slow
async def test_the_scaled_limit_still_dead_letters_a_larger_message(
    kafka_bootstrap: str,
    start_worker: StartWorker,
    topics: WorkerTopics,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # 28x28: its limit (401,408 bytes) is below the broker's default largest message (1 MB),
    # so a message just over it can be produced at all.
    worker = start_worker(PIXELWATCH_MODEL=str(_trained(28, tmp_path_factory.getbasetemp())))
    worker.wait_serving()
    limit = default_max_message_bytes(ImageShape(28, 28))
    over = b"\0" * (limit + 1)
    at = b"\0" * (limit // 784 * 784)  # 512 images of 28x28, exactly within the limit
    headers = [(HEADER_FORMAT, b"u8")]
    await produce(kafka_bootstrap, topics.images, [(b"over", over, headers), (b"at", at, headers)])
    records = await consume_until(
        kafka_bootstrap,
        [topics.scores, topics.dlq],
        lambda r: len(r[topics.scores]) >= 512 and len(r[topics.dlq]) >= 1,
        timeout=120,
        alive=worker.alive,
    )
    [dead] = records[topics.dlq]
    assert (dead.key, dict(dead.headers)[HEADER_REASON]) == (b"over", b"oversized")
    assert len(records[topics.scores]) == 512
