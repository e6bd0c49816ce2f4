"""Loading an exported scoring graph and scoring batches with onnxruntime.

The graph takes `pixels` float32 [batch, width*height] and returns `reconstruction` plus one
similarity per metric (`METRICS`, in that order); its `metadata_props` carry a
`ModelMetadata`. This module is the only place the runtime touches onnxruntime, and
calibration at export time uses it too.

Format versions: 2 added the `memory` and `combined` outputs (and the `memory` metadata
that describes the bank behind them). A format-1 model lacks them and is refused with one
line asking for a retrain, so every model in service emits the same scores.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from service.errors import ModelError
from service.scoring.images import ImageShape, Pixels
from service.scoring.reference import GoldenImages, ReferenceHistogram
from service.scoring.similarity import METRICS, MetricName

FORMAT_VERSION: Final = 2
METADATA_PREFIX: Final = "pixelwatch."
INPUT_NAME: Final = "pixels"
RECONSTRUCTION: Final = "reconstruction"

Mode = Literal["binary", "gray"]
# What a memory bank stores of each image (train --memory-features).
MemoryFeatures = Literal["code", "code+first-layer"]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class MemoryInfo(BaseModel):
    """The memory bank inside the graph, and the calibration behind `memory` and `combined`.

    The graph carries the same numbers as constants; this copy documents the model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    codes: int = Field(gt=0, description="latent codes stored in the graph")
    training_codes: int = Field(gt=0, description="training images the codes were chosen from")
    code_size: int = Field(gt=0)
    k: int = Field(gt=0, description="memory distance = to the k-th nearest stored code")
    seed: int = Field(ge=0, description="seeds the coreset's first code")
    scale: Positive = Field(description="the distance at which memory similarity is 0.5")
    calibration: Literal["held-out", "leave-one-out"] = Field(
        description="held-out normal images, or the training images scored without themselves"
    )
    calibration_images: int = Field(gt=0)
    reconstruction_mean: Finite  # of hamming on the calibration images
    reconstruction_spread: Positive
    memory_mean: Finite  # of memory similarity on the calibration images
    memory_spread: Positive
    offset: Finite  # combined = squash(mean standardised score - offset)
    features: MemoryFeatures = Field(
        default="code",
        description="what the bank stores of each image: its code, or its code and the "
        "encoder's first layer (distance: the geometric mean of the two)",
    )

    @model_serializer(mode="wrap")
    def _without_default_features(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A bank of codes only is written as before `features` existed, so that workers
        # that predate it still load such a model (they refuse keys they do not know).
        data = handler(self)
        if isinstance(data, dict) and data.get("features") == "code":
            del data["features"]
        return data


class DefaultsChoice(BaseModel):
    """What `train` chose by itself (the `auto` defaults), and by which rule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: Literal["course", "one-kind", "many-kinds"] = Field(
        description="course: fewer images than the rule's minimum; one-kind / many-kinds: that "
        "many or more, whose likeness is at least / below the rule's bound"
    )
    images: int = Field(ge=0, description="images read, which the rule counts")
    chosen: list[Literal["arch", "code", "metric"]] = Field(
        description="the settings left to auto (a flag given always wins)"
    )
    arch: str
    code: int = Field(gt=0)
    metric: MetricName
    likeness: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="mean cosine similarity of the images to their mean, thresholded at 0.5 "
        "(measured from the rule's minimum count of images)",
    )


class ModelMetadata(BaseModel):
    """What a scoring graph must say about itself before the runtime will use it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    mode: Mode
    metric: MetricName
    threshold: Unit
    training_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    pixelwatch_version: str
    created_at: datetime
    final_loss: float = Field(ge=0.0)
    arch: str = "dense"
    arch_params: dict[str, Any] = Field(default_factory=dict)
    memory: MemoryInfo
    # Added at export time for checks in service; older models have neither (see reference.py).
    golden: GoldenImages | None = None
    reference: ReferenceHistogram | None = None
    # What the `auto` defaults chose; absent when every choice was given as a flag.
    defaults: DefaultsChoice | None = None

    @field_validator("golden", "reference", "defaults", mode="before")
    @classmethod
    def _from_json(cls, value: Any) -> Any:
        # metadata_props hold strings: these arrive as JSON text.
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("format_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value != FORMAT_VERSION:
            raise ValueError(_unsupported(value))
        return value

    @property
    def shape(self) -> ImageShape:
        return ImageShape(self.width, self.height)

    def to_props(self) -> dict[str, str]:
        """Flat string properties for ONNX `metadata_props`."""
        props: dict[str, str] = {}
        for key, value in self.model_dump(mode="json").items():
            if value is None:
                continue  # an optional field left out, as older models leave it out
            text = value if isinstance(value, str) else json.dumps(value)
            props[METADATA_PREFIX + key] = text
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "ModelMetadata":
        ours = {
            k[len(METADATA_PREFIX) :]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)
        }
        if not ours:
            raise ModelError(f"{source}: not a pixelwatch model (no {METADATA_PREFIX}* metadata)")
        # The version first: an older model lacks newer keys, and that is not what is wrong.
        version = ours.get("format_version", "").strip()
        if version and version != str(FORMAT_VERSION):
            raise ModelError(f"{source}: metadata format_version: {_unsupported(version)}")
        required = {name for name, field in cls.model_fields.items() if field.is_required()}
        missing = sorted(required - set(ours))
        if missing:
            raise ModelError(f"{source}: model metadata is missing {', '.join(missing)}")
        values: dict[str, Any] = {}
        for key, text in ours.items():
            try:
                values[key] = json.loads(text) if key in _JSON_KEYS else text
            except json.JSONDecodeError:
                raise ModelError(f"{source}: metadata {key} is not valid JSON") from None
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "metadata"
            raise ModelError(f"{source}: metadata {field}: {first['msg']}") from None


_JSON_KEYS: Final = {"arch_params", "memory"}


def _unsupported(version: object) -> str:
    """Why a format version is refused, and what to do about an older one."""
    text = f"format version {version} is not supported (this build reads {FORMAT_VERSION})"
    older = str(version).isdigit() and int(str(version)) < FORMAT_VERSION
    return text + "; retrain the model with this version's `pixelwatch train`" if older else text


@dataclass(frozen=True)
class ScoredBatch:
    """Scores for a batch; plain arrays, row i belongs to input i."""

    reconstruction: NDArray[np.float32]
    scores: dict[MetricName, NDArray[np.float32]]
    metric: MetricName
    threshold: float

    @property
    def similarity(self) -> NDArray[np.float32]:
        return self.scores[self.metric]

    @property
    def anomaly(self) -> NDArray[np.bool_]:
        # Strictly below: an image exactly at the threshold is normal.
        return np.asarray(self.similarity < self.threshold)


class Model:
    """A validated scoring graph with one onnxruntime session, created once."""

    def __init__(
        self, path: Path, metadata: ModelMetadata, session: ort.InferenceSession, sha256: str
    ) -> None:
        self.path = path
        self.metadata = metadata
        self._session = session
        self.sha256 = sha256  # of the very bytes the session was built from

    @property
    def shape(self) -> ImageShape:
        return self.metadata.shape

    @property
    def version(self) -> str:
        return self.metadata.created_at.strftime("%Y%m%dT%H%M%SZ")

    def score(
        self,
        pixels: Pixels,
        *,
        metric: MetricName | None = None,
        threshold: float | None = None,
    ) -> ScoredBatch:
        """Run the graph once for a whole batch [N, width*height]."""
        batch = np.ascontiguousarray(pixels, dtype=np.float32).reshape(-1, self.shape.size)
        names = [RECONSTRUCTION, *METRICS]
        outputs = self._session.run(names, {INPUT_NAME: batch})
        return ScoredBatch(
            reconstruction=np.asarray(outputs[0], dtype=np.float32),
            scores={
                m: np.asarray(o, dtype=np.float32)
                for m, o in zip(METRICS, outputs[1:], strict=True)
            },
            metric=metric or self.metadata.metric,
            threshold=self.metadata.threshold if threshold is None else threshold,
        )


def verify_sha256(data: bytes, expected: str | None, source: str) -> str:
    """The sha256 of a model's bytes; a ModelError unless it is `expected` (when given).

    `PIXELWATCH_MODEL_SHA256` pins the model a worker may score with: a file replaced on disk,
    by mistake or not, is refused before anything is built from it.
    """
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected.lower():
        raise ModelError(
            f"{source}: sha256 {digest} is not the pinned {expected.lower()} "
            "(PIXELWATCH_MODEL_SHA256); refusing to score with it"
        )
    return digest


def load_model(path: Path | str, *, threads: int = 1, sha256: str | None = None) -> Model:
    """Open and validate a scoring graph; refuse anything the runtime could not score with,
    and, when `sha256` is given, anything but the file with that digest."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found (train one with `pixelwatch train`)")
    try:
        # Read once: the digest checked is the digest of the bytes that are loaded.
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    digest = verify_sha256(data, sha256, str(path))
    options = ort.SessionOptions()
    # The graph is tiny: one thread per worker process avoids fighting the event loop for cores.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a loadable ONNX model ({first_line})") from None
    metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
    _check_signature(session, metadata, str(path))
    return Model(path, metadata, session, digest)


def _check_signature(session: ort.InferenceSession, metadata: ModelMetadata, source: str) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ModelError(f"{source}: graph input must be a single '{INPUT_NAME}' tensor")
    width = inputs[0].shape[-1]
    if isinstance(width, int) and width != metadata.shape.size:
        raise ModelError(
            f"{source}: graph takes {width} pixels but metadata says {metadata.shape} "
            f"({metadata.shape.size})"
        )
    outputs = {o.name for o in session.get_outputs()}
    missing = [n for n in (RECONSTRUCTION, *METRICS) if n not in outputs]
    if missing:
        raise ModelError(f"{source}: graph lacks output(s) {', '.join(missing)}")
