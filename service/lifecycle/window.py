"""The rolling window of live similarities per model, kept in a faust table.

    data plane thread ──(once per batch: call_soon_threadsafe)──► event loop: tally per model
    event loop ──(every PIXELWATCH_DRIFT_INTERVAL s: a timer)──► chunks topic, keyed by sha256
    chunks topic ──► agent ──► table `model-windows` (changelog-backed) ──► /metrics, status

Every worker sends its tallies; the chunks topic and the table have one partition, so one
worker of the control group holds every model's window and exports its drift, anomaly rate
and (when enabled) suggested threshold. A restarted worker, or the worker that takes the
partition over after a rebalance, recovers the windows from the table's changelog: the
history survives. What a worker tallied since its last chunk (at most one interval) is lost
when it dies. A faust table can only be written while an agent handles an event (faust
sends the change to the changelog partition of that event), hence the topic in between.
"""

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any, Final

import faust
import numpy as np
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from service.config import Settings
from service.controlplane.app import control_group
from service.dataplane.pipeline import BatchResult, BatchScorer
from service.dataplane.shadow import ShadowScorer
from service.lifecycle.drift import (
    SLOTS,
    Chunk,
    ModelRef,
    ShadowTally,
    Summary,
    Tally,
    Window,
    summarise,
)
from service.scoring.reference import histogram

log = logging.getLogger("pixelwatch.drift")

TABLE: Final = "model-windows"


def chunks_topic(settings: Settings) -> str:
    return f"{control_group(settings)}-model-chunks"


def changelog_topic(settings: Settings) -> str:
    """faust's name for the table's changelog: `<app id>-<table>-changelog`."""
    return f"{control_group(settings)}-{TABLE}-changelog"


def model_ref(scorer: BatchScorer) -> ModelRef:
    """What a window needs to know of the live model and the worker's metric and threshold."""
    model = scorer.model
    reference = model.metadata.reference
    counts = reference.counts.get(scorer.metric) if reference else None
    return ModelRef(
        version=model.version,
        sha256=model.sha256,
        metric=scorer.metric,
        threshold=scorer.threshold,
        reference=counts,
        reference_source=reference.source if reference and counts else None,
        fpr=reference.fpr if reference else None,
    )


def worker_name() -> str:
    """This process, uniquely: a restarted container may get the same host name and pid, and
    its chunk numbers start again at 0."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class DriftReporter(Collector):
    """Feeds and serves the windows; see the module's docstring."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.slot_seconds = settings.drift_window / SLOTS
        self.worker = worker_name()
        # Keys (a model's sha256) and values (JSON) as raw bytes: `pixelwatch model status`
        # reads the changelog without faust.
        self.topic = app.topic(
            chunks_topic(settings),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=1,
        )
        self.table = app.Table(TABLE, default=None, key_type=bytes, value_type=bytes, partitions=1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ref: ModelRef | None = None  # data plane thread
        self._pending: dict[str, tuple[ModelRef, Tally]] = {}  # event loop
        self._seq = 0  # event loop
        app.agent(self.topic, name="pixelwatch-model-windows")(self._windows)
        app.timer(settings.drift_interval, name="pixelwatch-model-chunks")(self._flush)

    # ---- the data plane's thread ----

    def on_swap(self, scorer: BatchScorer, shadow: ShadowScorer | None) -> None:
        """A `SwapObserver`: the model (and metric, threshold) the next batches are scored with."""
        self._ref = model_ref(scorer)

    def observe_batch(self, result: BatchResult, seconds: float) -> None:
        """A `BatchObserver`: bins the batch, then hands it to the event loop in one call."""
        ref, loop = self._ref, self._loop
        if ref is None or loop is None or not result.scored:
            return
        counts = histogram(result.similarity)
        shadow: tuple[str, ShadowTally] | None = None
        verdicts = result.shadow
        if verdicts is not None:
            tally = ShadowTally(
                version=verdicts.version,
                images=verdicts.images,
                agree=int((verdicts.anomaly == result.anomaly).sum()),
                live_flagged=int(result.anomaly.sum()),
                shadow_flagged=int(verdicts.anomaly.sum()),
            )
            shadow = (verdicts.sha256, tally)
        # A closed loop raises: the worker is stopping, and the tally goes with it.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._add, ref, counts, result.flagged, shadow)

    # ---- the event loop ----

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _add(
        self,
        ref: ModelRef,
        counts: np.ndarray[Any, np.dtype[np.int64]],
        anomalies: int,
        shadow: tuple[str, ShadowTally] | None,
    ) -> None:
        _, tally = self._pending.setdefault(ref.sha256, (ref, Tally()))
        self._pending[ref.sha256] = (ref, tally)  # the newest threshold and metric
        tally.add_counts(counts, anomalies)
        if shadow is not None:
            sha, part = shadow
            tally.shadow.setdefault(sha, ShadowTally(version=part.version)).add(part)

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        now = time.time()
        for sha, (ref, tally) in pending.items():
            chunk = Chunk(model=ref, worker=self.worker, seq=self._seq, at=now, tally=tally)
            self._seq += 1
            await self.topic.send(key=sha.encode(), value=chunk.model_dump_json().encode())

    async def _windows(self, stream: Any) -> None:
        """The agent: every chunk joins its model's window in the table."""
        async for key, value in stream.items():
            try:
                chunk = Chunk.model_validate_json(value)
            except ValidationError as exc:
                first = exc.errors(include_url=False, include_input=False)[0]
                log.warning("a window chunk is invalid and was skipped: %s", first)
                continue
            raw = self.table.get(key)
            window = None
            if raw:
                with contextlib.suppress(ValidationError):
                    window = Window.model_validate_json(raw)
            if window is None:
                window = Window(model=chunk.model, slot_seconds=self.slot_seconds)
            if not window.add(chunk):
                continue  # read again after a crash: already in the window
            window.expire(chunk.at)
            self.table[key] = window.model_dump_json().encode()

    # ---- /metrics (on the event loop, when scraped) ----

    def owns_windows(self) -> bool:
        """Whether this worker holds the windows now (a standby copy does not count)."""
        topics = {self.topic.get_topic_name(), changelog_topic(self.settings)}
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # before the first assignment
            return False
        return any(tp.topic in topics for tp in actives)

    def summaries(self) -> list[Summary]:
        if not self.owns_windows():
            return []
        now = time.time()
        found = []
        for _key, raw in list(self.table.items()):
            try:
                window = Window.model_validate_json(raw)
            except ValidationError:
                continue
            summary = summarise(window, now, self.settings.drift_min_images)
            if summary.images:
                found.append(summary)
        return found

    def collect(self) -> Iterator[Metric]:
        drift = GaugeMetricFamily(
            "pixelwatch_similarity_drift",
            "Two-sample KS distance between the window's similarities and the model's reference "
            "histogram (normal images at export): the largest gap in the share of images below "
            "any similarity. Absent without a reference or with too few images",
            labels=["version"],
        )
        rate = GaugeMetricFamily(
            "pixelwatch_anomaly_rate",
            "Share of the window's scored images flagged anomalous, per live model version",
            labels=["version"],
        )
        images = GaugeMetricFamily(
            "pixelwatch_drift_window_images",
            "Scored images in the drift window (PIXELWATCH_DRIFT_WINDOW), across all workers",
            labels=["version"],
        )
        suggested = GaugeMetricFamily(
            "pixelwatch_suggested_threshold",
            "Threshold that would flag the model's calibrated false-positive rate of the window "
            "(PIXELWATCH_SUGGEST_THRESHOLD; never applied by the worker)",
            labels=["version"],
        )
        for summary in self.summaries():
            labels = [summary.version]
            images.add_metric(labels, summary.images)
            if summary.anomaly_rate is not None:
                rate.add_metric(labels, summary.anomaly_rate)
            if summary.drift is not None:
                drift.add_metric(labels, summary.drift)
            if self.settings.suggest_threshold and summary.suggested_threshold is not None:
                suggested.add_metric(labels, summary.suggested_threshold)
        yield drift
        yield rate
        yield images
        if self.settings.suggest_threshold:
            yield suggested

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed at scrape time: nothing to check at registration
