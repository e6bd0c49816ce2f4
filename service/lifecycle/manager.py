"""Which model is live and which one shadows it, decided from the models topic and the model
file, and handed to the data plane.

- The topic comes first: its newest valid live model for this worker's name is live. A
  model that fails validation (service/lifecycle/validate.py) is refused with one log line
  and a count in `pixelwatch_model_reloads_total{result}`, and the model before it keeps
  scoring.
- The model file (`--model PATH`) is the fallback while the topic holds no valid model of
  this name; a changed file is validated the same way and swapped in, unless a model from
  the topic is live (the log line says so).
- A starting worker takes the newest *activation* (a push as live, a rollback, a promotion)
  whose model passes validation, so it ends up where the running workers are: they refused
  the same invalid models.
- The shadow is the newest record on the shadow key, validated against the live model's
  image size; a tombstone removes it, and a shadow that becomes live stops shadowing.

Every change reaches the data plane as one `swap(live, shadow)`, which takes effect at its
next batch boundary.
"""

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from service.config import Settings
from service.dataplane.pipeline import BatchScorer
from service.dataplane.shadow import ShadowScorer
from service.errors import ModelError
from service.lifecycle.registry import ModelRecord, RegistryError
from service.lifecycle.validate import Reason, Refused, Validated, validate
from service.scoring.images import ImageShape
from service.scoring.model import Model

log = logging.getLogger("pixelwatch.models")

KEPT_MODELS: Final = 4
"""Validated models kept loaded (a promotion reuses the shadow's; a rollback may be near)."""

Apply = Callable[[BatchScorer, ShadowScorer | None], None]
Counted = Callable[[Reason | None], None]  # one reload attempt: None when it succeeded


@dataclass(frozen=True)
class Loaded:
    """A validated model and where it came from."""

    model: Model
    origin: str  # "topic" or the file's path

    @property
    def sha256(self) -> str:
        return self.model.sha256

    def describe(self) -> str:
        return f"{self.model.version} ({self.sha256[:12]})"


class NoModel(RegistryError):
    """Neither the topic nor the file gives a model to start with."""


class ModelLifecycle:
    def __init__(
        self,
        settings: Settings,
        cache: Path,
        scorer_for: Callable[[Model], BatchScorer],
        counted: Counted = lambda _result: None,
    ) -> None:
        self.settings = settings
        self.name = settings.model_name
        self.cache = cache
        self.scorer_for = scorer_for
        self.counted = counted
        self.live: Loaded | None = None
        self.shadow: Loaded | None = None
        self.topic_live: Loaded | None = None
        self.file: Loaded | None = None
        self.apply: Apply | None = None  # set once the data plane exists
        self._models: OrderedDict[str, Model] = OrderedDict()
        self._scorers: dict[str, BatchScorer] = {}
        # Records and file changes are handled one at a time (validation runs in a thread).
        self._busy = asyncio.Lock()

    # ---- start-up (before the data plane runs) ----

    def start(self, records: Sequence[ModelRecord], file_model: Loaded | None) -> None:
        """Choose the live model and the shadow from everything on the topic and the file."""
        self.file = file_model
        mine = [r for r in records if r.name == self.name]
        for record in activations(mine):
            loaded = self._try(record, shape=None)
            if loaded is not None:
                self.topic_live = loaded
                break
        self.live = self.topic_live or self.file
        if self.live is None:
            raise NoModel(
                f"no model to start with: {self.settings.model} does not exist and "
                f"{self.settings.models_topic} holds no valid model named {self.name} "
                "(publish one with `pixelwatch model push MODEL.onnx`, or give --model PATH)"
            )
        shadows = [r for r in mine if r.role == "shadow"]
        if shadows and not shadows[-1].tombstone:
            self._offer_shadow(shadows[-1])
        origin = "the models topic" if self.live is self.topic_live else self.live.origin
        shadow = f", shadow {self.shadow.describe()}" if self.shadow else ""
        log.info("model %s from %s is live%s", self.live.describe(), origin, shadow)

    def adopt_file(self, model: Model) -> Loaded:
        """The model file at start-up, checked like any other; a refusal ends start-up."""
        try:
            validated = self._validate(model.path.read_bytes(), self._pin, None, None)
        except Refused as exc:
            self.counted(exc.reason)
            raise ModelError(f"{model.path}: refused ({exc.reason}): {exc.text}") from None
        self.counted(None)
        log.info("model file %s: self-test %s", model.path, validated.self_test)
        return Loaded(validated.model, str(self.settings.model))

    def scorers(self) -> tuple[BatchScorer, ShadowScorer | None]:
        assert self.live is not None
        live = self._scorer(self.live.model)
        shadow = ShadowScorer(self._scorer(self.shadow.model)) if self.shadow else None
        return live, shadow

    # ---- while running (on the event loop) ----

    async def on_record(self, record: ModelRecord) -> None:
        """A record read from the models topic after start-up."""
        if record.name != self.name or record.role == "archive":
            return
        async with self._busy:
            await self._on_record(record)

    async def _on_record(self, record: ModelRecord) -> None:
        if record.role == "shadow":
            if record.tombstone:
                if self.shadow is not None:
                    log.info("shadow model %s removed", self.shadow.describe())
                    self.shadow = None
                    self._apply()
                return
            await asyncio.to_thread(self._offer_shadow, record)
            self._apply()
            return
        if record.tombstone:
            log.warning("the live model of %s was deleted from the topic; keeping it", self.name)
            return
        if self.live is not None and record.sha256 == self.live.sha256:
            log.info("model %s is already live", record.describe())
            return
        shape = self.live.model.shape if self.live else None
        loaded = await asyncio.to_thread(self._try, record, shape)
        if loaded is None:
            return
        self.topic_live = loaded
        self._make_live(loaded, "the models topic")

    async def on_file(self, data: bytes) -> None:
        """The model file changed: `data` is its new content."""
        async with self._busy:
            await self._on_file(data)

    async def _on_file(self, data: bytes) -> None:
        loaded = await asyncio.to_thread(self._try_file, data)
        if loaded is None:
            return
        self.file = loaded
        if self.topic_live is not None:
            log.info(
                "model file %s changed to %s; not applied: %s from the models topic takes "
                "precedence",
                self.settings.model, loaded.describe(), self.topic_live.describe(),
            )  # fmt: skip
            return
        self._make_live(loaded, str(self.settings.model))

    # ---- decisions ----

    def _make_live(self, loaded: Loaded, origin: str) -> None:
        previous = self.live
        self.live = loaded
        if self.shadow is not None and self.shadow.sha256 == loaded.sha256:
            self.shadow = None  # promoted: it no longer shadows itself
        before = f", replacing {previous.describe()}" if previous else ""
        log.info(
            "model %s from %s goes live at the next batch%s", loaded.describe(), origin, before
        )
        self._apply()

    def _offer_shadow(self, record: ModelRecord) -> None:
        if self.live is not None and record.sha256 == self.live.sha256:
            log.info("shadow model %s is the live model: not shadowing", record.describe())
            self.shadow = None
            return
        shape = self.live.model.shape if self.live else None
        loaded = self._try(record, shape, role="shadow model")
        if loaded is not None:
            self.shadow = loaded
            log.info("shadow model %s scores beside %s", loaded.describe(), self._live_text())

    def _apply(self) -> None:
        if self.apply is not None:
            live, shadow = self.scorers()
            self.apply(live, shadow)

    # ---- validation (off the event loop: onnxruntime and hashing block) ----

    def _try(
        self, record: ModelRecord, shape: ImageShape | None, role: str = "model"
    ) -> Loaded | None:
        """The record's model validated, or None after one log line saying why not."""
        where = f"{self.settings.models_topic}@{record.offset}"
        try:
            try:
                data = record.graph()
            except RegistryError as exc:
                raise Refused("fetch", str(exc)) from None
            validated = self._validate(data, record.sha256 or "", shape, record.version or None)
        except Refused as exc:
            self._refused(f"{role} {record.describe()} from {where}", exc)
            return None
        self.counted(None)
        log.info("%s %s validated: self-test %s", role, record.describe(), validated.self_test)
        return Loaded(validated.model, "topic")

    def _try_file(self, data: bytes) -> Loaded | None:
        shape = self.live.model.shape if self.live else None
        try:
            # A pinned model (PIXELWATCH_MODEL_SHA256): a changed file is refused like a
            # corrupt one, and the pinned model keeps scoring.
            validated = self._validate(data, self._pin, shape, None)
        except Refused as exc:
            self._refused(f"model file {self.settings.model}", exc)
            return None
        self.counted(None)
        return Loaded(validated.model, str(self.settings.model))

    @property
    def _pin(self) -> str | None:
        pinned = self.settings.model_sha256
        return pinned.lower() if pinned else None

    def _validate(
        self, data: bytes, sha256: str | None, shape: ImageShape | None, version: str | None
    ) -> Validated:
        validated = validate(
            data,
            sha256=sha256,
            cache=self.cache,
            shape=shape,
            version=version,
            threads=self.settings.onnx_threads,
        )
        known = self._models.get(validated.model.sha256)
        if known is not None:  # one onnxruntime session per model, however often it returns
            validated = Validated(known, validated.self_test)
        self._models[validated.model.sha256] = validated.model
        self._models.move_to_end(validated.model.sha256)
        while len(self._models) > KEPT_MODELS:
            sha, _ = self._models.popitem(last=False)
            self._scorers.pop(sha, None)
        return validated

    def _refused(self, what: str, exc: Refused) -> None:
        self.counted(exc.reason)
        log.error(
            "%s refused (%s): %s; %s keeps scoring", what, exc.reason, exc.text, self._live_text()
        )

    def _scorer(self, model: Model) -> BatchScorer:
        scorer = self._scorers.get(model.sha256)
        if scorer is None:
            scorer = self._scorers[model.sha256] = self.scorer_for(model)
        return scorer

    def _live_text(self) -> str:
        return self.live.describe() if self.live else "no model"


def activations(records: Sequence[ModelRecord]) -> list[ModelRecord]:
    """The records that made a model live, newest first, one per model: every live record,
    and the archive records of models that were live once (the topic may have compacted
    their live records away)."""
    candidates = [
        r
        for r in records
        if not r.tombstone and (r.role == "live" or (r.role == "archive" and r.activated_at))
    ]

    def when(record: ModelRecord) -> tuple[str, int]:
        at = record.activated_at or _iso(record.timestamp_ms)
        return at, record.offset

    ordered = sorted(candidates, key=when, reverse=True)
    seen: set[str] = set()
    newest: list[ModelRecord] = []
    for record in ordered:
        if record.sha256 not in seen:
            seen.add(record.sha256)
            newest.append(record)
    return newest


def _iso(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds")
