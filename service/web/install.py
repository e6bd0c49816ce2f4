"""Puts the probes and the anomaly page on the faust app's web server, and nothing else.

faust serves views of its own on that port: `/router/` (which reveals the host name),
`/table/`, statistics or a status page at `/`. The worker's server answers only what we
define: `/metrics` (registered by `service.observability.metrics.instrument`), `/healthz`,
`/ready`, and the page when it is enabled; everything else is 404.
"""

from collections.abc import Iterator

import faust
from faust.web.base import BlueprintManager
from faust.web.drivers.aiohttp import Web as AiohttpWeb
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.config import Settings
from service.dataplane.status import DataPathStatus
from service.web.feed import AnomalyFeed
from service.web.routes import add_page_routes, add_probe_routes, secure


class _PageCollector(Collector):
    def __init__(self, feed: AnomalyFeed) -> None:
        self.feed = feed

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "pixelwatch_page_rejected",
            "Anomaly payloads the page could not show (invalid or of another image size)",
            value=self.feed.rejected,
        )
        yield GaugeMetricFamily(
            "pixelwatch_page_clients",
            "Browsers connected to the anomaly page's live stream",
            value=self.feed.subscribers,
        )


def install_web(
    app: faust.App,
    settings: Settings,
    feed: AnomalyFeed | None,
    status: DataPathStatus,
    registry: CollectorRegistry,
) -> None:
    """Serve the probes (always) and the page (when `feed` is given) on `app`'s web server,
    and drop faust's own views."""
    web = app.web
    if not isinstance(web, AiohttpWeb):
        raise TypeError(f"the worker's routes need faust's aiohttp web driver, not {web!r}")
    # Replaced before the server starts, which is when faust applies its blueprints.
    web.blueprints = BlueprintManager()
    server = web.web_app
    secure(server)
    add_probe_routes(server, status, settings.stall_timeout)
    if feed is not None:
        add_page_routes(server, feed)
        registry.register(_PageCollector(feed))
