"""The memory-bank cost measurement: what it measures and how it reports (not how fast)."""

import numpy as np
import pytest

from model_export.digits.memory_cost import main, markdown, measure_memory_cost, shifted_digits
from model_export.digits.protocol import digits


def test_shifted_digits_are_the_digits_and_their_eight_one_pixel_shifts() -> None:
    pixels, _ = digits()
    shifted = shifted_digits()
    assert shifted.shape == (9 * 1797, 64)
    square = pixels.reshape(-1, 8, 8)
    right = shifted[5 * 1797 : 6 * 1797].reshape(-1, 8, 8)  # (dy, dx) = (0, 1)
    assert np.array_equal(right[:, :, 1:], square[:, :, :-1])
    assert not right[:, :, 0].any()
    assert np.array_equal(shifted[4 * 1797 : 5 * 1797], pixels)  # (0, 0)


def test_every_bank_size_is_measured_at_every_batch_size_with_ratios_to_the_smallest() -> None:
    points = measure_memory_cost((300, 1, 64), (1, 8), epochs=1, min_seconds=0.0)
    assert [(p.codes, p.batch) for p in points] == [
        (300, 1),
        (300, 8),
        (1, 1),
        (1, 8),
        (64, 1),
        (64, 8),
    ]
    size = {p.codes: p.graph_bytes for p in points}
    assert size[1] < size[64] < size[300]
    # 236 more stored codes of 4 float32 values each (the dense code), and nothing else.
    assert size[300] - size[64] == pytest.approx(236 * 4 * 4 + 236 * 4, abs=64)
    for p in points:
        assert p.images_per_second == pytest.approx(p.batch / p.seconds_per_batch)
        smallest = next(q for q in points if q.codes == 1 and q.batch == p.batch)
        assert p.speed_ratio == pytest.approx(p.images_per_second / smallest.images_per_second)
        assert p.bytes_ratio == pytest.approx(p.graph_bytes / smallest.graph_bytes)
    table = markdown(points).splitlines()
    assert table[0] == "| stored codes | graph | images/s, batch 1 | images/s, batch 8 |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| 1", "| 64", "| 300"]
    assert "(1.00x)" in table[2]


def test_bad_sizes_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sizes", "1,lots"]) == 2
    assert capsys.readouterr().err == (
        "error: --sizes and --batches take comma-separated whole numbers\n"
    )
    assert main(["--batches", "0"]) == 2
    assert capsys.readouterr().err == "error: --sizes, --batches and --code must be >= 1\n"
