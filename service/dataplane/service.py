"""The data plane as a service of the faust worker: started and stopped with the process.

The loop runs on a thread of its own (librdkafka's calls block; the event loop stays free for
the HTTP server and the control plane). If the loop ends by itself, for whatever reason, the
service crashes the worker, which exits non-zero: a worker that no longer consumes must never
keep answering health checks.
"""

import asyncio
import logging
import threading

from mode import Service

from service.dataplane.loop import DataPlane

log = logging.getLogger("pixelwatch.dataplane")


class DataPlaneService(Service):
    def __init__(self, plane: DataPlane) -> None:
        super().__init__()
        self.plane = plane
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Event | None = None
        self._error: BaseException | None = None

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        ended = self._ended = asyncio.Event()

        def run() -> None:
            try:
                self.plane.run()
            except BaseException as exc:  # reported to the event loop, which stops the worker
                self._error = exc
            finally:
                loop.call_soon_threadsafe(ended.set)

        self._thread = threading.Thread(target=run, name="pixelwatch-dataplane", daemon=True)
        self._thread.start()
        self.add_future(self._watch())

    async def _watch(self) -> None:
        assert self._ended is not None
        await self._ended.wait()
        if self.should_stop:
            return  # a requested stop
        reason = self._error or RuntimeError("the data plane stopped by itself")
        log.error("data plane stopped: %s", reason)
        self._error = None  # reported: the stop that follows the crash says it no more
        await self.crash(reason)

    async def on_stop(self) -> None:
        self.plane.stop()
        if self._ended is not None and self._thread is not None and self._thread.is_alive():
            await self._ended.wait()
        if self._error is not None:
            log.error("data plane stopped: %s", self._error)
