"""Reading and writing images: the course's X/. text, CSV rows and .npy arrays.

Every reader returns float32 pixels of shape [N, width*height] in [0, 1] and refuses
malformed input with an `InputError` naming the file and line (or row, or index).

>>> parse_art("X. .X", ImageShape(2, 2)).tolist()
[1.0, 0.0, 0.0, 1.0]
>>> print("\\n".join(render(np.array([1, 0, 0, 1]), ImageShape(2, 2))))
X.
.X
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.errors import InputError

Pixels = NDArray[np.float32]

BLACK, WHITE = "X", "."
_ART = {BLACK: 1.0, WHITE: 0.0}


@dataclass(frozen=True)
class ImageShape:
    width: int = 8
    height: int = 8

    @property
    def size(self) -> int:
        return self.width * self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class ImageSet:
    """Images read from one source; `labels[i]` says where image i came from."""

    pixels: Pixels
    source: str
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


def parse_art(text: str, shape: ImageShape, *, source: str = "<string>", where: str = "") -> Pixels:
    """One image from X/. characters; white space is ignored."""
    values: list[float] = []
    for column, char in enumerate(text, start=1):
        if char.isspace():
            continue
        if char not in _ART:
            at = f"{where} column {column}" if where else f"column {column}"
            raise InputError(source, at.strip(), f"unknown pixel character {char!r} (use X or .)")
        values.append(_ART[char])
    if len(values) != shape.size:
        raise InputError(
            source, where or "image", f"{len(values)} pixels, expected {shape.size} ({shape})"
        )
    return np.asarray(values, dtype=np.float32)


def check_values(values: Pixels, shape: ImageShape, source: str, where: str) -> Pixels:
    """Refuse a wrong pixel count, NaN/inf or values outside [0, 1]."""
    if values.size != shape.size:
        raise InputError(source, where, f"{values.size} pixels, expected {shape.size} ({shape})")
    if not np.isfinite(values).all():
        raise InputError(source, where, "pixel values must be finite numbers (found NaN or inf)")
    if (values < 0).any() or (values > 1).any():
        bad = float(values[(values < 0) | (values > 1)][0])
        raise InputError(source, where, f"pixel value {bad:g} is outside [0, 1]")
    return values.astype(np.float32, copy=False)


def _read_text(path: Path, shape: ImageShape) -> ImageSet:
    """One image per line, or `height` lines of `width` pixels per image (blocks)."""
    images: list[Pixels] = []
    labels: list[str] = []
    block: list[tuple[int, str]] = []

    def flush_block() -> None:
        if not block:
            return
        first = block[0][0]
        if len(block) != shape.height:
            raise InputError(
                str(path),
                f"line {first}",
                f"image block has {len(block)} rows, expected {shape.height} ({shape}) "
                "or one image per line",
            )
        for number, row in block:
            if len(row.replace(" ", "")) != shape.width:
                raise InputError(
                    str(path),
                    f"line {number}",
                    f"row has {len(row.replace(' ', ''))} pixels, expected {shape.width}",
                )
        text = "".join(row for _, row in block)
        images.append(parse_art(text, shape, source=str(path), where=f"line {first}"))
        labels.append(f"line {first}")
        block.clear()

    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line:
            flush_block()
            continue
        pixels = sum(1 for c in line if not c.isspace())
        if not block and pixels == shape.size:
            images.append(parse_art(line, shape, source=str(path), where=f"line {number}"))
            labels.append(f"line {number}")
        else:
            # Unknown characters are reported here, before any count mismatch.
            parse_art(line, ImageShape(pixels, 1), source=str(path), where=f"line {number}")
            block.append((number, line))
            if len(block) == shape.height:
                flush_block()
    flush_block()
    return _finish(images, labels, path, shape)


def _read_csv(path: Path, shape: ImageShape) -> ImageSet:
    """One image per row; a first row that is not numeric is a header and is skipped."""
    images: list[Pixels] = []
    labels: list[str] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or cells[0].startswith("#"):
                continue
            try:
                values = np.asarray([float(c) for c in cells], dtype=np.float32)
            except ValueError:
                if number == 1 and not images:
                    continue  # header
                bad = next(c for c in cells if not _is_number(c))
                raise InputError(str(path), f"row {number}", f"{bad!r} is not a number") from None
            images.append(check_values(values, shape, str(path), f"row {number}"))
            labels.append(f"row {number}")
    return _finish(images, labels, path, shape)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_npy(path: Path, shape: ImageShape) -> ImageSet:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(str(path), "header", f"not a readable .npy array ({exc})") from None
    if array.ndim == 3 and array.shape[1:] == (shape.height, shape.width):
        array = array.reshape(array.shape[0], shape.size)
    if array.ndim != 2 or array.shape[1] != shape.size:
        raise InputError(
            str(path),
            "shape",
            f"array of shape {array.shape}, expected N x {shape.height} x {shape.width} "
            f"or N x {shape.size}",
        )
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(str(path), "dtype", f"array of {array.dtype}, expected numbers")
    array = array.astype(np.float32)
    for index, row in enumerate(array):
        check_values(row, shape, str(path), f"index {index}")
    return ImageSet(array, str(path), tuple(f"index {i}" for i in range(len(array))))


def _finish(images: list[Pixels], labels: list[str], path: Path, shape: ImageShape) -> ImageSet:
    if not images:
        raise InputError(str(path), "file", "contains no images")
    return ImageSet(np.stack(images).astype(np.float32), str(path), tuple(labels))


def read_images(path: Path | str, shape: ImageShape = ImageShape()) -> ImageSet:
    """Read images by file suffix: .npy, .csv, anything else is X/. text."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "file", "no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _read_npy(path, shape)
        if suffix == ".csv":
            return _read_csv(path, shape)
        return _read_text(path, shape)
    except UnicodeDecodeError as exc:
        raise InputError(str(path), f"byte {exc.start}", "not UTF-8 text") from None


def render(pixels: NDArray[np.floating], shape: ImageShape, cut: float = 0.5) -> list[str]:
    """Rows of X/. art; gray values at or above `cut` print as X."""
    flat = np.asarray(pixels).reshape(-1)
    return [
        "".join(BLACK if v >= cut else WHITE for v in flat[r * shape.width : (r + 1) * shape.width])
        for r in range(shape.height)
    ]


def infer_shape(size: int) -> ImageShape:
    """A square shape for `size` pixels, for data read before a model exists."""
    side = math.isqrt(size)
    if side * side != size:
        raise ValueError(f"{size} pixels is not a square image; give width and height")
    return ImageShape(side, side)
