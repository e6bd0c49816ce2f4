"""Image files: the course's X/. text, CSV and .npy, and one-line errors for bad input."""

from pathlib import Path

import numpy as np
import pytest

from service.errors import InputError
from service.samples import SEED_TEST, SEED_TRAIN
from service.scoring.images import ImageShape, parse_art, read_images, render

SHAPE = ImageShape(8, 8)
SQUARE_LINE = "........ .XXXXXX. .X....X. .X....X. .X....X. .X....X. .XXXXXX. ........"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_seed_files_hold_the_course_images() -> None:
    train, test = read_images(SEED_TRAIN, SHAPE), read_images(SEED_TEST, SHAPE)
    assert train.pixels.shape == (2, 64) and test.pixels.shape == (4, 64)
    assert train.pixels.dtype == np.float32
    assert int(train.pixels[0].sum()) == 20  # the square's outline
    assert int(train.pixels[1].sum()) == 21  # the filled triangle
    assert int(test.pixels[1].sum()) == 20  # the triangle with one white pixel
    assert int(test.pixels[2].sum()) == 32  # four thick corner brackets
    assert test.labels[0] == "line 3"


def test_one_image_per_line_with_spaces_and_comments(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", f"# comment\n{SQUARE_LINE}\n\n{SQUARE_LINE.replace(' ', '')}\n")
    images = read_images(path, SHAPE)
    assert len(images) == 2
    assert images.labels == ("line 2", "line 4")
    np.testing.assert_array_equal(images.pixels[0], images.pixels[1])
    assert render(images.pixels[0], SHAPE)[1] == ".XXXXXX."


def test_other_sizes_come_from_the_shape(tmp_path: Path) -> None:
    path = write(tmp_path, "small.txt", "X.\n.X\n\nXX\nXX\n")
    images = read_images(path, ImageShape(2, 2))
    assert images.pixels.tolist() == [[1, 0, 0, 1], [1, 1, 1, 1]]


def test_wrong_pixel_count_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.txt", "# header\n" + SQUARE_LINE[:-1] + "\n")
    with pytest.raises(InputError) as info:
        read_images(path, SHAPE)
    assert str(info.value) == (
        f"{path}:line 2: line has 63 pixels, expected 64 (8x8) for one image per line, "
        "or 8 per row of an image block"
    )


def test_short_image_block_says_how_many_rows_it_has(tmp_path: Path) -> None:
    rows = SQUARE_LINE.split()
    path = write(tmp_path, "bad.txt", "\n".join(rows[:3]) + "\n\n" + SQUARE_LINE + "\n")
    with pytest.raises(InputError) as info:
        read_images(path, SHAPE)
    assert str(info.value) == (
        f"{path}:line 1: image block has 3 rows, expected 8 (8x8) or one image per line"
    )


def test_short_row_in_a_block_names_its_line(tmp_path: Path) -> None:
    rows = SQUARE_LINE.split()
    rows[3] = rows[3][:-1]
    path = write(tmp_path, "bad.txt", "\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"bad.txt:line 4: row has 7 pixels, expected 8"):
        read_images(path, SHAPE)


def test_unknown_character_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.txt", "\n" + SQUARE_LINE.replace("X", "o", 1) + "\n")
    with pytest.raises(InputError, match=r"bad.txt:line 2 column 11: unknown pixel character 'o'"):
        read_images(path, SHAPE)


def test_csv_rows_with_header_are_read(tmp_path: Path) -> None:
    header = ",".join(f"p{i}" for i in range(4))
    path = write(tmp_path, "a.csv", f"{header}\n0,0.5,1,0.25\n1,1,0,0\n")
    images = read_images(path, ImageShape(2, 2))
    assert images.pixels.tolist() == [[0, 0.5, 1, 0.25], [1, 1, 0, 0]]
    assert images.labels == ("row 2", "row 3")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("0,0.5,1.5,0", "row 2: pixel value 1.5 is outside [0, 1]"),
        ("0,nan,1,0", "row 2: pixel values must be finite numbers"),
        ("0,0,1", "row 2: 3 pixels, expected 4 (2x2)"),
        ("0,zero,1,0", "row 2: 'zero' is not a number"),
    ],
)
def test_bad_csv_rows_name_the_row(tmp_path: Path, row: str, message: str) -> None:
    path = write(tmp_path, "bad.csv", f"0,0,0,0\n{row}\n")
    with pytest.raises(InputError) as info:
        read_images(path, ImageShape(2, 2))
    assert str(info.value).startswith(f"{path}:{message}")


def test_npy_accepts_flat_and_square_arrays(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "square.npy", data)
    np.save(tmp_path / "flat.npy", data.reshape(3, 64))
    for name in ("square.npy", "flat.npy"):
        np.testing.assert_array_equal(
            read_images(tmp_path / name, SHAPE).pixels, data.reshape(3, 64)
        )


def test_npy_errors_name_the_index_or_shape(tmp_path: Path) -> None:
    data = np.zeros((3, 64), dtype=np.float32)
    data[2, 5] = -0.1
    np.save(tmp_path / "neg.npy", data)
    with pytest.raises(InputError, match=r"neg.npy:index 2: pixel value -0.1 is outside"):
        read_images(tmp_path / "neg.npy", SHAPE)
    np.save(tmp_path / "wide.npy", np.zeros((2, 65)))
    with pytest.raises(InputError, match=r"wide.npy:shape: array of shape \(2, 65\)"):
        read_images(tmp_path / "wide.npy", SHAPE)


def test_missing_and_empty_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.txt:file: no such file"):
        read_images(tmp_path / "nope.txt", SHAPE)
    with pytest.raises(InputError, match=r"empty\.txt:file: contains no images"):
        read_images(write(tmp_path, "empty.txt", "# nothing\n"), SHAPE)


def test_parse_art_counts_pixels() -> None:
    with pytest.raises(InputError, match="3 pixels, expected 4"):
        parse_art("X.X", ImageShape(2, 2))
