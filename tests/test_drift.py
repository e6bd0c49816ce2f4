"""The drift statistic (binned two-sample KS), the suggested threshold and the rolling window."""

import numpy as np
import pytest

from service.lifecycle.drift import (
    SLOTS,
    Chunk,
    ModelRef,
    ShadowTally,
    Tally,
    Window,
    ks_critical,
    ks_distance,
    suggested_threshold,
    summarise,
)
from service.scoring.reference import HISTOGRAM_BINS, histogram


def counts(**bins: int) -> np.ndarray:
    out = np.zeros(HISTOGRAM_BINS, np.int64)
    for name, count in bins.items():
        out[int(name.removeprefix("b"))] = count
    return out


def sample(rng: np.random.Generator, n: int, a: float, b: float) -> np.ndarray:
    return histogram(rng.beta(a, b, n).astype(np.float32))


def test_identical_histograms_have_no_drift_whatever_their_size() -> None:
    reference = counts(b90=3, b95=5, b99=2)
    assert ks_distance(reference, reference * 7) == 0.0


def test_the_distance_is_the_gap_in_the_share_below_a_similarity() -> None:
    reference = counts(b95=100)
    live = counts(b95=70, b40=30)  # 30% of live images fall where no normal image did
    assert ks_distance(reference, live) == pytest.approx(0.3)
    # ...which is exactly how much more a threshold anywhere in (0.40, 0.95] flags.
    live_flagged, reference_flagged = 0.3, 0.0
    assert ks_distance(reference, live) == pytest.approx(live_flagged - reference_flagged)
    assert ks_distance(live, reference) == pytest.approx(0.3)  # symmetric


def test_empty_reference_bins_need_no_epsilon() -> None:
    reference = counts(b99=50)
    live = counts(b0=1, b99=49)
    assert ks_distance(reference, live) == pytest.approx(0.02)


def test_samples_of_one_distribution_stay_below_the_critical_value_and_a_shift_does_not() -> None:
    rng = np.random.default_rng(3)
    reference = sample(rng, 400, 20, 2)  # similarities near 0.9, like normal images
    same = [ks_distance(reference, sample(rng, 5000, 20, 2)) for _ in range(20)]
    shifted = ks_distance(reference, sample(rng, 5000, 12, 2))  # mean 0.86 instead of 0.91
    critical = ks_critical(400, 5000)
    assert max(same) < critical < shifted
    assert critical == pytest.approx(1.628 * np.sqrt(5400 / (400 * 5000)))


def test_no_images_on_either_side_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        ks_distance(counts(), counts(b3=1))


def test_the_suggested_threshold_flags_at_most_the_target_share_of_the_window() -> None:
    live = counts(b40=5, b50=5, b80=40, b95=50)
    assert suggested_threshold(live, 0.05) == 0.5  # flags the 5 at 0.40..0.41
    assert suggested_threshold(live, 0.10) == 0.8  # flags the 10 below 0.8
    assert suggested_threshold(live, 0.0) == 0.4  # flags nothing
    assert suggested_threshold(live, 0.07) == 0.5
    assert suggested_threshold(counts(), 0.1) is None
    assert suggested_threshold(counts(b99=10), 1.0) == 1.0


MODEL = ModelRef(
    version="v1", sha256="a" * 64, metric="hamming", threshold=0.6,
    reference=counts(b95=10).tolist(), reference_source="held-out", fpr=0.1,
)  # fmt: skip


SEQ = iter(range(1_000_000))


def chunk(at: float, worker: str = "w1", model: ModelRef = MODEL, **kwargs: int) -> Chunk:
    tally = Tally()
    tally.add_counts(counts(**kwargs), anomalies=kwargs.get("b40", 0))
    return Chunk(model=model, worker=worker, seq=next(SEQ), at=at, tally=tally)


def test_the_window_sums_the_chunks_of_every_worker_per_slot() -> None:
    window = Window(model=MODEL, slot_seconds=60.0)
    window.add(chunk(6000.0, b95=10))
    window.add(chunk(6010.0, "w2", b95=5, b40=5))
    window.add(chunk(6065.0, b95=20))
    assert [s.start for s in window.slots] == [6000.0, 6060.0]
    total = window.total(6065.0)
    assert (total.images, total.anomalies) == (40, 5)
    assert total.dense().tolist() == counts(b95=35, b40=5).tolist()


def test_a_chunk_read_again_after_a_crash_counts_once() -> None:
    window = Window(model=MODEL, slot_seconds=60.0)
    first, second = chunk(6000.0, b95=10), chunk(6001.0, b95=5)
    assert window.add(first) and window.add(second)
    assert not window.add(first) and not window.add(second)
    assert window.total(6001.0).images == 15
    other = chunk(6002.0, "w2", b95=1)
    other.seq = first.seq  # sequence numbers are per worker
    assert window.add(other) and window.total(6002.0).images == 16


def test_slots_older_than_the_window_are_left_out_and_forgotten() -> None:
    window = Window(model=MODEL, slot_seconds=10.0)
    window.add(chunk(0.0, b95=10))
    window.add(chunk(300.0, b40=10))
    window_end = 10.0 * (SLOTS + 1)
    assert window.total(window_end - 1).images == 20
    assert window.total(window_end).images == 10
    window.expire(window_end)
    assert [s.start for s in window.slots] == [300.0]


def test_a_window_round_trips_through_json() -> None:
    window = Window(model=MODEL, slot_seconds=60.0)
    one = chunk(6000.0, b95=10)
    one.tally.shadow["b" * 64] = ShadowTally(version="v2", images=10, agree=9, shadow_flagged=1)
    window.add(one)
    again = Window.model_validate_json(window.model_dump_json())
    assert again == window
    assert again.total(6000.0).shadow["b" * 64].agree == 9


def test_the_summary_has_drift_only_with_a_reference_and_enough_images() -> None:
    window = Window(model=MODEL, slot_seconds=60.0)
    window.add(chunk(6000.0, b95=70, b40=30))
    summary = summarise(window, 6000.0, min_images=100)
    assert summary.images == 100 and summary.anomaly_rate == pytest.approx(0.3)
    assert summary.drift == pytest.approx(0.3)
    assert summary.critical == pytest.approx(ks_critical(10, 100))
    assert summary.suggested_threshold == 0.4  # 10% target: nothing can be flagged less
    assert summarise(window, 6000.0, min_images=101).drift is None
    no_reference = MODEL.model_copy(update={"reference": None})
    blind = Window(model=no_reference, slot_seconds=60.0)
    blind.add(chunk(6000.0, model=no_reference, b95=100))
    summary = summarise(blind, 6000.0, min_images=1)
    assert summary.drift is None and summary.anomaly_rate == 0.0
