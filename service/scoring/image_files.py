"""PNG and JPEG files as images: a folder of them, a glob pattern, or one file.

Each file becomes one image: composited onto white if it has transparency, converted to
grayscale, resized to the model's width x height (area averaging when shrinking, bilinear
when enlarging), and mapped to [0, 1] with dark = 1, the course's convention (`X` is black
ink). A folder is read non-recursively, its `.png`, `.jpg` and `.jpeg` files in name order;
a glob pattern takes every file it matches, in name order.

Pillow is imported only here and only when such files are read, so the worker, which never
reads image files, does not need it: `pip install 'pixelwatch[images]'` adds it (the train
extra includes it).
"""

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from service.errors import InputError, PixelwatchError
from service.scoring.images import ImageShape, Pixels

SUFFIXES: Final = (".png", ".jpg", ".jpeg")
FORMATS: Final = ("PNG", "JPEG")
INSTALL: Final = "pip install 'pixelwatch[images]'"


class MissingExtraError(PixelwatchError):
    """An optional dependency is needed for this input and is not installed."""


def is_pattern(text: str) -> bool:
    return any(char in text for char in "*?[")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def find_files(source: str) -> list[Path]:
    """The image files a folder holds or a glob pattern matches, in name order."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
        if not files:
            hint = "; give a text, .csv or .npy file by its own path" if any(path.iterdir()) else ""
            raise InputError(source, "folder", f"contains no .png, .jpg or .jpeg files{hint}")
        return files
    files = sorted(Path(p) for p in glob.glob(source) if Path(p).is_file())
    if not files:
        raise InputError(source, "pattern", "matches no files")
    return files


def read_files(
    files: Sequence[Path], shape: ImageShape, *, source: str, skip_bad: bool = False
) -> tuple[list[Pixels], list[Path], list[str]]:
    """(pixels, files read, one line per file skipped); a bad file fails unless `skip_bad`."""
    image_module = _pillow(source)
    images: list[Pixels] = []
    read: list[Path] = []
    skipped: list[str] = []
    for path in files:
        try:
            images.append(_read_one(image_module, path, shape))
            read.append(path)
        except InputError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
    if not images:
        raise InputError(source, "files", f"none of {len(files)} files is a readable image")
    return images, read, skipped


def _pillow(source: str) -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtraError(
            f"{source}: reading PNG or JPEG files needs Pillow, the images extra: {INSTALL}"
        ) from None
    return Image


def _read_one(image_module: Any, path: Path, shape: ImageShape) -> Pixels:
    try:
        with image_module.open(path) as opened:
            if opened.format not in FORMATS:
                raise InputError(str(path), "image", f"{opened.format} image; expected PNG or JPEG")
            opened.load()
            gray = _grayscale(image_module, opened)
    except InputError:
        raise
    except image_module.UnidentifiedImageError:
        raise InputError(str(path), "image", "not a PNG or JPEG image") from None
    except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError) as exc:
        # Pillow reports truncated or corrupt data as OSError, SyntaxError or ValueError.
        raise InputError(str(path), "image", f"cannot decode it ({_first_line(exc)})") from None
    size = (shape.width, shape.height)
    if gray.size != size:
        shrinking = gray.width >= shape.width and gray.height >= shape.height
        method = image_module.Resampling.BOX if shrinking else image_module.Resampling.BILINEAR
        gray = gray.resize(size, method)
    values = np.asarray(gray, dtype=np.float32).reshape(shape.size)
    return (255.0 - values) / 255.0  # dark = 1, as the course's X


def _grayscale(image_module: Any, image: Any) -> Any:
    """8-bit grayscale; transparent pixels count as white paper."""
    has_alpha = image.mode in {"RGBA", "LA", "PA"} or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        paper = image_module.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = image_module.alpha_composite(paper, rgba)
    return image.convert("L")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
