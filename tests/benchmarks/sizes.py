"""Images bigger than the course's 8x8 for `make bench`: 28x28 and 64x64.

The normal images are scikit-learn's digits (every digit but 0) scaled up by nearest
neighbour, so nothing is downloaded; the anomalies are uniform gray noise. The models are
trained here in a few epochs with `pixelwatch train`: the bench measures speed, not detection,
and a few epochs give the same graph (and cost) as many.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.errors import ModelError
from service.scoring.model import load_model

SIZES = (28, 64)
ARCHITECTURES = ("dense", "conv")
ROOT = Path(__file__).resolve().parents[2]


def digits(size: int) -> NDArray[np.float32]:
    """The digits 1 to 9 at `size` x `size`, flattened, in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pick = np.arange(size) * 8 // size
    images = (data.images[:, pick][:, :, pick] / 16.0).astype(np.float32)
    normal: NDArray[np.float32] = images[data.target != 0].reshape(-1, size * size)
    return normal


def sized_images(size: int, count: int, share: float, seed: int = 0) -> NDArray[np.float32]:
    """`count` images: digits, and a `share` of uniform gray noise."""
    rng = np.random.default_rng(seed)
    normal = digits(size)
    images = normal[rng.integers(0, len(normal), count)]
    noisy = rng.random(count) < share
    images[noisy] = rng.random((int(noisy.sum()), size * size), dtype=np.float32)
    return images


def ensure_sized_model(directory: Path, size: int, arch: str, epochs: int) -> Path:
    """A gray `arch` model of `size` x `size` digits, trained once into `directory`."""
    path = directory / f"{arch}-{size}x{size}-e{epochs}.onnx"
    if path.is_file():
        try:
            load_model(path)
            return path
        except ModelError as exc:
            print(f"training {path} again: {exc}", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"digits-{size}x{size}.npy"
    np.save(data, digits(size)[:600].reshape(-1, size, size))
    command = [
        sys.executable, "-m", "service.cli", "train", "--data", str(data), "--out", str(path),
        "--arch", arch, "--mode", "gray", "--width", str(size), "--height", str(size),
        "--epochs", str(epochs), "--fpr", "0.05", "--metric", "hamming", "--no-progress",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return path
