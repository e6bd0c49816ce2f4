"""Reading and writing images: the course's X/. text, CSV rows, .npy arrays and image files.

Every reader returns float32 pixels of shape [N, width*height] in [0, 1] and refuses
malformed input with an `InputError` naming the file and line (or row, or index). PNG and
JPEG files (a folder, a glob pattern or one file) are read by `image_files`, which imports
Pillow only when it is needed.

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
    """Images read from one source; `labels[i]` says where image i came from.

    `files` are the files read (one, or the image files of a folder or pattern); `skipped`
    has one line per unreadable image file left out because skipping was asked for.
    """

    pixels: Pixels
    source: str
    labels: tuple[str, ...]
    files: tuple[Path, ...] = ()
    skipped: tuple[str, ...] = ()

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
            if not block and pixels != shape.width:
                raise InputError(
                    str(path),
                    f"line {number}",
                    f"line has {pixels} pixels, expected {shape.size} ({shape}) for one image "
                    f"per line, or {shape.width} per row of an image block",
                )
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
                bad = next(c for c in cells if not is_number(c))
                raise InputError(str(path), f"row {number}", f"{bad!r} is not a number") from None
            images.append(check_values(values, shape, str(path), f"row {number}"))
            labels.append(f"row {number}")
    return _finish(images, labels, path, shape)


def is_number(text: str) -> bool:
    """A CSV cell that float() reads."""
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
    labels = tuple(f"index {i}" for i in range(len(array)))
    return ImageSet(array, str(path), labels, (path,))


def _finish(images: list[Pixels], labels: list[str], path: Path, shape: ImageShape) -> ImageSet:
    if not images:
        raise InputError(str(path), "file", "contains no images")
    return ImageSet(np.stack(images).astype(np.float32), str(path), tuple(labels), (path,))


def read_images(
    path: Path | str,
    shape: ImageShape = ImageShape(),
    *,
    binarize: float | None = None,
    skip_bad: bool = False,
) -> ImageSet:
    """Read images from a file (by suffix: .npy, .csv, .png/.jpg/.jpeg, anything else is X/.
    text), a folder of PNG/JPEG files or a glob pattern matching them.

    `binarize` T maps values >= T to 1 and the others to 0. `skip_bad` leaves unreadable
    image files out (listed in `skipped`) instead of failing on the first.
    """
    from service.scoring import image_files  # the module that may need Pillow

    source = str(path)
    path = Path(path)
    if path.is_dir() or (not path.exists() and image_files.is_pattern(source)):
        images = _read_image_files(image_files.find_files(source), shape, source, skip_bad)
    elif not path.exists():
        raise InputError(source, "file", "no such file")
    elif not path.is_file():
        raise InputError(source, "file", "not a regular file")
    elif image_files.is_image_file(path):
        images = _read_image_files([path], shape, source, skip_bad=False)
    else:
        images = _read_data_file(path, shape)
    if binarize is not None:
        pixels = (images.pixels >= binarize).astype(np.float32)
        images = ImageSet(pixels, images.source, images.labels, images.files, images.skipped)
    return images


def _read_data_file(path: Path, shape: ImageShape) -> ImageSet:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _read_npy(path, shape)
        if suffix == ".csv":
            return _read_csv(path, shape)
        return _read_text(path, shape)
    except UnicodeDecodeError as exc:
        raise InputError(str(path), f"byte {exc.start}", "not UTF-8 text") from None


def _read_image_files(
    files: list[Path], shape: ImageShape, source: str, skip_bad: bool
) -> ImageSet:
    from service.scoring import image_files

    pixels, read, skipped = image_files.read_files(files, shape, source=source, skip_bad=skip_bad)
    folder = Path(source) if Path(source).is_dir() else None
    labels = tuple(str(p.relative_to(folder)) if folder else str(p) for p in read)
    return ImageSet(np.stack(pixels), source, labels, tuple(read), tuple(skipped))


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
