"""Checking a model before it may score: the same checks for a pushed model, a changed model
file and `pixelwatch model push` itself.

In order, each refusal with its reason (the `result` label of pixelwatch_model_reloads_total):

1. `sha256`: the bytes hash to the sha256 the record declares (a pinned hash, for a file);
2. `corrupt`: onnxruntime can load the graph;
3. `format`: its metadata format version is one this build reads;
4. `metadata`: the rest of the metadata and the graph's signature are valid (and the
   version agrees with the record's header);
5. `size`: its image size is the one the input has (the live model's);
6. `self_test`: its golden images score as they did at export, within `GOLDEN_TOLERANCE`.

A model without golden images passes step 6 with "no reference": there is nothing to
compare, and refusing every model exported before golden images existed would help nobody.
A model that passes is written to the cache directory under its sha256 and loaded from
there, so the file behind a `Model` never changes under it.
"""

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import onnxruntime as ort

from service.errors import ModelError, PixelwatchError
from service.lifecycle.registry import sha256_of
from service.scoring.images import ImageShape
from service.scoring.model import FORMAT_VERSION, METADATA_PREFIX, Model, load_model
from service.scoring.reference import GOLDEN_TOLERANCE
from service.scoring.similarity import METRICS
from service.untrusted import clean

Reason = Literal["sha256", "corrupt", "format", "metadata", "size", "self_test", "fetch"]
REASONS: Final[tuple[Reason, ...]] = (
    "sha256", "corrupt", "format", "metadata", "size", "self_test", "fetch",
)  # fmt: skip


class Refused(PixelwatchError):
    """A model failed a check; `reason` names which."""

    def __init__(self, reason: Reason, text: str) -> None:
        self.reason: Reason = reason
        self.text = text
        super().__init__(f"{reason}: {text}")


@dataclass(frozen=True)
class Validated:
    model: Model
    self_test: str  # what the self-test found, for the log line


def validate(
    data: bytes,
    *,
    sha256: str | None,
    cache: Path,
    shape: ImageShape | None = None,
    version: str | None = None,
    threads: int = 1,
) -> Validated:
    """Check `data` (a model's bytes) as described above; raise `Refused` for the first
    failed check. `sha256`, `shape` and `version` are what it must match, when known."""
    digest = sha256_of(data)
    if sha256 is not None and digest != sha256.lower():
        raise Refused(
            "sha256", f"its bytes hash to {digest[:12]}…, not the declared {clean(sha256, 64)}"
        )
    path = _cached(cache, digest, data)
    _check_format(path)
    try:
        model = load_model(path, threads=threads)
    except ModelError as exc:
        raise Refused("metadata", _without_path(str(exc), path)) from None
    if version is not None and version != model.version:
        raise Refused(
            "metadata", f"the record says version {clean(version, 64)}, the model {model.version}"
        )
    if shape is not None and model.shape != shape:
        raise Refused("size", f"it takes {model.shape} images, the input has {shape}")
    return Validated(model, self_test(model))


def self_test(model: Model) -> str:
    """Score the golden images; raise `Refused` if any similarity moved."""
    golden = model.metadata.golden
    if golden is None:
        return "no reference (the model has no golden images)"
    metrics = [m for m in METRICS if m in golden.scores]
    if not metrics:
        return "no reference (no golden scores for a metric this build computes)"
    pixels = golden.array()
    if pixels.shape[1] != model.shape.size:
        raise Refused("self_test", f"golden images have {pixels.shape[1]} pixels")
    scored = model.score(pixels)
    worst, where = 0.0, ""
    for metric in metrics:
        expected = np.asarray(golden.scores[metric], dtype=np.float64)
        gap = np.abs(scored.scores[metric].astype(np.float64) - expected)
        if gap.max() > worst:
            worst, row = float(gap.max()), int(gap.argmax())
            where = (
                f"{metric} of golden image {row} is {float(scored.scores[metric][row]):.6f}, "
                f"expected {expected[row]:.6f}"
            )
    if worst > GOLDEN_TOLERANCE:
        raise Refused("self_test", f"{where} (tolerance {GOLDEN_TOLERANCE:g})")
    return f"passed ({len(pixels)} golden images, {len(metrics)} metrics)"


def _cached(cache: Path, digest: str, data: bytes) -> Path:
    """`data` at CACHE/SHA256.onnx, written once (atomically: a reader never sees half)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{digest}.onnx"
    if path.is_file() and sha256_of(path.read_bytes()) == digest:
        return path
    staging = cache / f".{digest}.{uuid.uuid4().hex[:8]}.partial"
    try:
        staging.write_bytes(data)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def _check_format(path: Path) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Refused("corrupt", f"not a loadable ONNX graph ({clean(text, 200)})") from None
    props = session.get_modelmeta().custom_metadata_map
    version = props.get(METADATA_PREFIX + "format_version")
    if version is None:
        raise Refused("format", f"no {METADATA_PREFIX}format_version: not a pixelwatch model")
    if version.strip() != str(FORMAT_VERSION):
        raise Refused(
            "format",
            f"format version {clean(version, 20)} (this build reads {FORMAT_VERSION})",
        )


def _without_path(text: str, path: Path) -> str:
    """A ModelError names the cache file; the record is what the operator knows."""
    return text.removeprefix(f"{path}: ")
