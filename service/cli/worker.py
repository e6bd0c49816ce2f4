"""`pixelwatch worker`: validate settings and model, create topics, then run the faust worker."""

import argparse
import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import faust

from service.config import Settings, load_settings
from service.dataplane.pipeline import BatchScorer
from service.errors import PixelwatchError
from service.kafka.topics import TopicSetup, ensure_topics
from service.observability.logs import throttle_handlers, use_level
from service.scoring.model import Model, load_model
from service.scoring.similarity import METRICS

log = logging.getLogger(__name__)

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
    settings = settings_from_args(args)
    use_level(settings.log_level)
    model = load_model(settings.model, threads=settings.onnx_threads, sha256=settings.model_sha256)
    scorer = scorer_for(settings, model)
    log.info(
        "model %s: %s %s, metric %s, threshold %.3f",
        settings.model,
        model.shape,
        model.metadata.mode,
        scorer.metric,
        scorer.threshold,
    )
    prepare_data_dir(settings.data_dir)
    check_metrics_port(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    topics = loop.run_until_complete(ensure_topics(settings, settings.connect_timeout))
    return start_worker(settings, scorer, loop, topics)


def scorer_for(settings: Settings, model: Model) -> BatchScorer:
    return BatchScorer(
        model,
        metric=settings.metric,
        threshold=settings.threshold,
        max_message_bytes=settings.max_message_bytes,
        scores_format=settings.scores_format if settings.scores_enabled else None,
        anomalies_format=settings.anomalies_format,
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
    scorer: BatchScorer,
    loop: asyncio.AbstractEventLoop,
    topics: TopicSetup,
) -> int:
    from prometheus_client import REGISTRY

    from service.controlplane.app import create_app
    from service.dataplane.loop import BatchObserver, DataPlane
    from service.dataplane.service import DataPlaneService
    from service.dataplane.status import DataPathStatus
    from service.observability.metrics import WorkerMetrics, instrument
    from service.web.feed import AnomalyFeed, PageModel
    from service.web.install import install_web

    # The default registry also carries the process and Python metrics.
    metrics = WorkerMetrics(REGISTRY)
    metrics.describe_model(scorer)
    metrics.describe_topics(topics.partitions, topics.expected)
    app = create_app(settings)
    status = DataPathStatus()
    observers: list[BatchObserver] = [metrics.observe_batch]
    feed = None
    if settings.metrics_port and settings.web_enabled:
        feed = AnomalyFeed(
            settings.web_anomalies, PageModel.of(scorer), window=settings.web_rate_window
        )
        observers.append(feed.observe_batch)
    plane = DataPlane(
        settings,
        scorer,
        status=status,
        observers=observers,
        on_delivery_failure=metrics.delivery_failed,
        on_lag=metrics.set_consumer_lag,
        on_commit=metrics.set_committed,
    )
    metrics.unconfirmed.set_function(lambda: plane.unconfirmed)
    if settings.metrics_port:
        instrument(app, metrics)
        install_web(app, settings, feed, status, REGISTRY)
    worker = _Worker(
        app, DataPlaneService(plane), loop=loop, loglevel=settings.log_level, quiet=True
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
