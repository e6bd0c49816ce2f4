"""The worker's HTTP routes besides `/metrics`, on any aiohttp application.

- `/healthz`: the process and its event loop are alive (answering proves the loop), and the
  data path has not crashed.
- `/ready`: input partitions are assigned, and while messages wait the data path has made
  progress within `stall_timeout` seconds.
- `/`, `/static/app.js`, `/static/style.css`, `/events`: the anomaly page and its live
  stream (server-sent events: a snapshot, then new anomalies, rates, and the model's
  header again whenever another model goes live), only when the page is enabled.

Every response carries a strict Content-Security-Policy: the page loads its own script and
style and nothing else, and talks to no other origin.
"""

import asyncio
import dataclasses
from importlib import resources
from typing import Any, Final

import orjson
from aiohttp import web

from service.dataplane.status import DataPathStatus, Verdict
from service.web.feed import AnomalyFeed

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

STATIC_FILES: Final = {
    "/": ("index.html", "text/html"),
    "/static/app.js": ("app.js", "text/javascript"),
    "/static/style.css": ("style.css", "text/css"),
}

KEEPALIVE_SECONDS: Final = 5.0
"""Longest quiet spell on the live stream: the rates are re-sent even when nothing arrives."""
RETRY_MS: Final = 2000
"""How soon a browser reconnects after losing the stream."""


def secure(app: web.Application) -> None:
    """Add the security headers to every response, 404s included."""

    async def add_headers(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")

    app.on_response_prepare.append(add_headers)


def _probe(verdict: Verdict, key: str) -> web.Response:
    body = {key: verdict.ok, **dataclasses.asdict(verdict)}
    del body["ok"]
    if verdict.idle_seconds is not None:
        body["idle_seconds"] = round(verdict.idle_seconds, 3)
    return web.Response(
        body=orjson.dumps(body),
        status=200 if verdict.ok else 503,
        content_type="application/json",
    )


def add_probe_routes(app: web.Application, status: DataPathStatus, stall_timeout: float) -> None:
    async def healthz(_request: web.Request) -> web.Response:
        return _probe(status.liveness(), "alive")

    async def ready(_request: web.Request) -> web.Response:
        return _probe(status.readiness(stall_timeout), "ready")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", ready)


def _static(name: str) -> bytes:
    return (resources.files("service.web") / "static" / name).read_bytes()


def _event(name: str, data: Any) -> bytes:
    # orjson escapes every control character inside strings, so `data` is a single line
    # whatever the payloads held: an anomaly cannot end its event or forge another.
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def add_page_routes(app: web.Application, feed: AnomalyFeed) -> None:
    for path, (name, content_type) in STATIC_FILES.items():
        body = _static(name)

        async def serve(
            _request: web.Request, body: bytes = body, content_type: str = content_type
        ) -> web.Response:
            return web.Response(body=body, content_type=content_type, charset="utf-8")

        app.router.add_get(path, serve)

    def config() -> dict[str, Any]:
        # Read anew for each use: a swap replaces the model while the page is open.
        return {
            "model": dataclasses.asdict(feed.model),
            "capacity": feed.capacity,
            "window": feed.window,
        }

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        feed.subscribe()
        try:
            version = feed.version
            shown = feed.snapshot()
            seq = feed.last_seq
            await response.write(f"retry: {RETRY_MS}\n\n".encode())
            model = feed.model
            snapshot = {"config": config(), "stats": feed.stats(), "anomalies": shown}
            await response.write(_event("snapshot", snapshot))
            while not feed.closed:
                latest = await feed.wait(version, KEEPALIVE_SECONDS)
                if feed.closed:
                    break
                if feed.model != model:  # a new model is live: the header changes
                    model = feed.model
                    await response.write(_event("config", config()))
                if latest != version:
                    version = latest
                    fresh = feed.since(seq)
                    if fresh:
                        seq = fresh[0]["seq"]
                        await response.write(_event("anomalies", {"anomalies": fresh}))
                await response.write(_event("stats", feed.stats()))
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            feed.unsubscribe()
        return response

    app.router.add_get("/events", events)

    async def bind(_app: web.Application) -> None:
        feed.bind(asyncio.get_running_loop())

    async def close(_app: web.Application) -> None:
        # aiohttp waits for open handlers on shutdown: end the live streams so that a stop
        # is not held up by a browser tab.
        feed.close()

    app.on_startup.append(bind)
    app.on_shutdown.append(close)
