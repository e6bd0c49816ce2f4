"""`pixelwatch worker`: validate settings and model, create topics, then run the faust worker."""

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import faust

from service.config import Settings, load_settings
from service.dataplane.pipeline import BatchScorer
from service.errors import PixelwatchError
from service.kafka.topics import TopicSetup, ensure_topics
from service.observability.logs import throttle_handlers, use_level
from service.observability.tracing import tracing_enabled
from service.scoring.model import Model, load_model
from service.scoring.similarity import METRICS

log = logging.getLogger(__name__)
T = TypeVar("T")

# flag -> Settings field; every flag defaults to None so the environment applies unless given.
FLAGS: dict[str, tuple[str, type, str]] = {
    "--model": ("model", Path, "scoring graph (.onnx)"),
    "--bootstrap": ("bootstrap", str, "Kafka bootstrap servers, host:port[,host:port]"),
    "--group-id": ("group_id", str, "consumer group"),
    "--input-topic": ("input_topic", str, "topic to consume images from"),
    "--partitions": ("partitions", int, "partitions for topics the worker creates"),
    "--batch-size": ("batch_size", int, "most messages per ONNX call"),
    "--batch-window": ("batch_window", float, "seconds to wait to fill a batch"),
    "--threshold": ("threshold", float, "override the model's anomaly threshold"),
    "--metrics-port": ("metrics_port", int, "HTTP port for /metrics (0 disables)"),
    "--max-message-bytes": ("max_message_bytes", int, "larger payloads go to the DLQ"),
    "--data-dir": ("data_dir", Path, "local state directory"),
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Every option can also be set as PIXELWATCH_<NAME>, e.g. PIXELWATCH_BATCH_SIZE."
    for flag, (field, kind, help_text) in FLAGS.items():
        parser.add_argument(flag, dest=field, type=kind, help=help_text)
    parser.add_argument("--metric", choices=METRICS, help="override the model's metric")
    parser.add_argument(
        "--no-scores",
        dest="scores_enabled",
        action="store_const",
        const=False,
        help="publish anomalies only, not every score",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    names = [f[0] for f in FLAGS.values()] + ["metric", "scores_enabled"]
    overrides: dict[str, Any] = {
        n: getattr(args, n) for n in names if getattr(args, n, None) is not None
    }
    return load_settings(**overrides)


def run(args: argparse.Namespace) -> int:
    # Start-up may wait minutes for Kafka. A SIGTERM meanwhile (Kubernetes deleting a pod
    # that is still starting) ends it at once with exit code 0: nothing was consumed yet.
    # faust's worker replaces this handler with its orderly shutdown once it runs.
    signal.signal(signal.SIGTERM, _stop_before_start)
    settings = settings_from_args(args)
    use_level(settings.log_level)
    checked = check_model_file(settings)  # a model file given but unusable: fail before Kafka
    prepare_data_dir(settings.data_dir)
    check_metrics_port(settings)
    tracing = tracing_enabled(os.environ)  # the OTEL_* variables: asked for, and usable
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    topics = loop.run_until_complete(
        _unless_stopped(ensure_topics(settings, settings.connect_timeout))
    )
    if topics is None:
        return 0
    code = start_worker(settings, checked, loop, topics, tracing=tracing)
    leave_past_stuck_threads(code, STOPPED_THREADS_GRACE)
    return code


STOPPED_THREADS_GRACE = 5.0  # seconds, after faust's own (bounded) stop


def leave_past_stuck_threads(code: int, grace: float) -> None:
    """Exit now with `code` if a thread the worker started outlives its stop by `grace` s.

    The worker has stopped: the data plane delivered and committed, faust flushed its
    producer. A client thread still blocked in a network call (aiokafka's consumer thread,
    stopped while its group was joining) would otherwise keep the process from exiting,
    a stopped worker that never ends, until Kubernetes kills it.
    """
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon]
    stuck = [name for name in stuck if name != threading.main_thread().name]
    if stuck:
        log.warning("threads %s did not stop within %g s; exiting anyway", stuck, grace)
        logging.shutdown()
        os._exit(code)


async def _unless_stopped(work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work` unless SIGTERM or SIGINT comes first (then cancel it); None if stopped.

    The event loop's own signal handling, rather than an exception raised from a handler at
    whatever line the signal happens to interrupt, so no library's cleanup can swallow it.
    """
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[object] = loop.create_future()

    def stop(signum: int) -> None:
        if not stopped.done():
            stopped.set_result(signum)

    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop, int(sig))
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    try:
        waiting: list[asyncio.Future[Any]] = [task, stopped]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        # Until faust installs its own, a late SIGTERM still ends start-up at once.
        signal.signal(signal.SIGTERM, _stop_before_start)
    if not stopped.done():
        return task.result()  # raises what start-up raised
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    log.info("stopped during start-up (signal %s)", stopped.result())
    return None


def _stop_before_start(signum: int, frame: object) -> None:
    log.info("stopped during start-up (signal %d)", signum)
    raise SystemExit(0)


def check_model_file(settings: Settings) -> Model | None:
    """The model file, loaded; None when none was set and the default one is absent (the
    models topic must then have one). A file that was set but is missing or invalid ends
    start-up with one line."""
    if "model" not in settings.model_fields_set and not settings.model.exists():
        return None
    model = load_model(settings.model, threads=settings.onnx_threads, sha256=settings.model_sha256)
    scorer = scorer_for(settings, model)
    log.info(
        "model %s: %s %s, metric %s, threshold %.3f; messages up to %d bytes",
        settings.model,
        model.shape,
        model.metadata.mode,
        scorer.metric,
        scorer.threshold,
        scorer.decoder.max_message_bytes,
    )
    return model


def scorer_for(settings: Settings, model: Model) -> BatchScorer:
    return BatchScorer(
        model,
        metric=settings.metric,
        threshold=settings.threshold,
        max_message_bytes=settings.max_message_bytes,
        scores_format=settings.scores_format if settings.scores_enabled else None,
        anomalies_format=settings.anomalies_format,
        scores_grouping=settings.scores_grouping,
    )


def prepare_data_dir(path: Path) -> None:
    # faust creates only the last level of its datadir, with a traceback when that fails.
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PixelwatchError(
            f"data dir {path}: cannot create it ({exc.strerror}); set PIXELWATCH_DATA_DIR"
        ) from None


def check_metrics_port(settings: Settings) -> None:
    """Fail in one line now rather than with faust's traceback after joining the group.

    A second worker on the same host is the usual cause. Linux refuses a bind with
    SO_REUSEADDR while another socket listens, so sockets lingering in TIME_WAIT do not count.
    """
    if not settings.metrics_port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.metrics_host, settings.metrics_port))
        except OSError as exc:
            raise PixelwatchError(
                f"metrics port {settings.metrics_host}:{settings.metrics_port} is not free "
                f"({exc.strerror}); set PIXELWATCH_METRICS_PORT to another port, or 0 to disable"
            ) from None


class _Worker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        # mode has just replaced the log handlers: rate-limit the Kafka clients' lines there.
        throttle_handlers(logger)


def start_worker(
    settings: Settings,
    file_model: Model | None,
    loop: asyncio.AbstractEventLoop,
    topics: TopicSetup,
    *,
    tracing: bool = False,
) -> int:
    from prometheus_client import REGISTRY

    from service.controlplane.app import create_app
    from service.dataplane.loop import BatchObserver, DataPlane, SwapObserver
    from service.dataplane.service import DataPlaneService
    from service.dataplane.shadow import ShadowScorer
    from service.dataplane.status import DataPathStatus
    from service.lifecycle.follow import ModelFileWatcher, ModelFollower
    from service.lifecycle.manager import ModelLifecycle
    from service.lifecycle.registry import (
        CHANGELOG_CONFIG,
        CHUNKS_CONFIG,
        TOPIC_CONFIG,
        create_missing,
    )
    from service.lifecycle.window import DriftReporter, changelog_topic, chunks_topic
    from service.observability.metrics import WorkerMetrics, instrument
    from service.web.feed import AnomalyFeed, PageModel
    from service.web.install import install_web

    # The default registry also carries the process and Python metrics.
    metrics = WorkerMetrics(REGISTRY)
    cache = settings.data_dir / "models"
    lifecycle = ModelLifecycle(
        settings, cache, lambda model: scorer_for(settings, model), metrics.reloaded
    )
    lifecycle_topics = {
        settings.models_topic: TOPIC_CONFIG,
        chunks_topic(settings): CHUNKS_CONFIG,
        changelog_topic(settings): CHANGELOG_CONFIG,
    }
    loop.run_until_complete(create_missing(settings, lifecycle_topics, settings.connect_timeout))
    follower = ModelFollower(settings)
    records = loop.run_until_complete(follower.catch_up(settings.connect_timeout))
    lifecycle.start(records, lifecycle.adopt_file(file_model) if file_model else None)
    scorer, shadow = lifecycle.scorers()

    metrics.describe_topics(topics.partitions, topics.expected)
    app = create_app(settings)
    drift = DriftReporter(app, settings)
    status = DataPathStatus()
    observers: list[BatchObserver] = [metrics.observe_batch, drift.observe_batch]
    on_swap: list[SwapObserver] = [metrics.on_swap, drift.on_swap]
    feed = None
    if settings.metrics_port and settings.web_enabled:
        feed = AnomalyFeed(
            settings.web_anomalies, PageModel.of(scorer), window=settings.web_rate_window
        )
        observers.append(feed.observe_batch)
        on_swap.append(feed.on_swap)
    tracer = None
    if tracing:
        from service.observability.tracing import BatchTracer

        tracer = BatchTracer(settings)
        observers.append(tracer.observe_batch)
        log.info("tracing: one span per batch, sent over OTLP/HTTP as the OTEL_* variables say")

    def swapped(live: BatchScorer, shadow: ShadowScorer | None) -> None:
        for observe in on_swap:
            observe(live, shadow)

    swapped(scorer, shadow)  # the models the first batch is scored with
    plane = DataPlane(
        settings,
        scorer,
        shadow=shadow,
        status=status,
        observers=observers,
        on_delivery_failure=metrics.delivery_failed,
        on_lag=metrics.set_consumer_lag,
        on_commit=metrics.set_committed,
        on_swap=swapped,
    )
    lifecycle.apply = plane.swap
    follower.on_record = lifecycle.on_record
    drift.bind(loop)
    metrics.unconfirmed.set_function(lambda: plane.unconfirmed)
    if settings.metrics_port:
        instrument(app, metrics)
        REGISTRY.register(drift)
        install_web(app, settings, feed, status, REGISTRY)
    services: list[Any] = [DataPlaneService(plane), follower]
    if lifecycle.file is not None:
        services.append(
            ModelFileWatcher(
                settings.model,
                settings.model_poll_interval,
                lifecycle.file.sha256,
                lifecycle.on_file,
            )
        )
    worker = _Worker(app, *services, loop=loop, loglevel=settings.log_level, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if tracer is not None:
            tracer.shutdown()  # the last batches' spans
    return 0
