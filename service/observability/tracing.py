"""One OpenTelemetry span per scored batch, sent over OTLP (HTTP/protobuf) when configured.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set;
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off again. Every other
standard variable (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, `OTEL_SPAN_LINK_COUNT_LIMIT`, ...) is read by the
OpenTelemetry SDK itself. The SDK is imported only when tracing is on, so a worker without it
pays nothing.

A batch has many parents, one per traced input, so its span is a root with one span link per
input that carried a valid `traceparent` (service/dataplane/tracecontext.py): a trace viewer
shows the batch from each producer's trace, and each producer's request from the batch.
"""

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from service.errors import PixelwatchError
from service.schemas import HEADER_MODEL_VERSION

if TYPE_CHECKING:
    from service.config import Settings
    from service.dataplane.pipeline import BatchResult

ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOLS: Final = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
SUPPORTED_PROTOCOL: Final = "http/protobuf"
DEFAULT_SERVICE_NAME: Final = "pixelwatch"


def tracing_enabled(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces; a protocol other than HTTP/protobuf is
    one line at start-up, not a worker that silently sends nothing."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    if not any(environ.get(name, "").strip() for name in ENDPOINTS):
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter != "otlp":
        raise PixelwatchError(
            f"OTEL_TRACES_EXPORTER={exporter[:40]!r}: pixelwatch exports traces over OTLP only "
            "(set it to otlp, or none to turn tracing off)"
        )
    for name in PROTOCOLS:
        protocol = environ.get(name, "").strip()
        if protocol and protocol != SUPPORTED_PROTOCOL:
            raise PixelwatchError(
                f"{name}={protocol[:40]!r}: pixelwatch sends OTLP over HTTP/protobuf only "
                f"(set it to {SUPPORTED_PROTOCOL}; the endpoint is the receiver's HTTP port, "
                "usually 4318)"
            )
        if protocol:
            break  # the traces-specific variable wins over the general one
    return True


class BatchTracer:
    """Turns each batch the data plane answers into one span (a batch observer)."""

    def __init__(self, settings: "Settings") -> None:
        # Imported here: the SDK and its exporter load only when tracing is on.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        # Flushed by `shutdown`, not at exit: the worker may leave by os._exit.
        self._provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("pixelwatch.dataplane")
        self._topic = settings.input_topic
        self._group = settings.group_id
        self._name = f"process {settings.input_topic}"
        # The SDK keeps this many links a span (OTEL_SPAN_LINK_COUNT_LIMIT) and drops the
        # rest: no use building them.
        self._max_links = SpanLimits().max_links

    def observe_batch(self, result: "BatchResult", elapsed: float) -> None:
        """One span for the batch: from its start (when it was decoded) for `elapsed`
        seconds, linked to every input's trace context."""
        from opentelemetry.context import Context
        from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags

        parents = [
            parent
            for carried in result.carried or ()
            if carried is not None and (parent := carried.parent) is not None
        ]
        links = [
            Link(
                SpanContext(
                    int(parent.trace_id, 16),
                    int(parent.span_id, 16),
                    is_remote=True,
                    trace_flags=TraceFlags(int(parent.flags, 16)),
                )
            )
            for parent in parents[: self._max_links]
        ]
        start = _nanoseconds(result.detected_at)
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": self._topic,
            "messaging.consumer.group.name": self._group,
            "messaging.batch.message_count": len(result.messages),
            "pixelwatch.batch.size": len(result.messages),
            "pixelwatch.batch.images": result.scored,
            "pixelwatch.batch.anomalies": result.flagged,
            "pixelwatch.batch.dead_letters": len(result.dead),
            "pixelwatch.batch.traced": len(parents),
            "pixelwatch.model.version": _model_version(result),
        }
        span = self._tracer.start_span(
            self._name,
            context=Context(),  # a root: the inputs are links, not parents
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            start_time=start,
        )
        span.end(end_time=None if start is None else start + int(elapsed * 1e9))

    def shutdown(self) -> None:
        """Send the spans still queued (bounded by OTEL_BSP_EXPORT_TIMEOUT) and stop."""
        self._provider.shutdown()


def _model_version(result: "BatchResult") -> str:
    for name, value in result.headers:
        if name == HEADER_MODEL_VERSION and isinstance(value, bytes):
            return value.decode()
    return ""


def _nanoseconds(iso: str) -> int | None:
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1e9)
    except ValueError:
        return None
