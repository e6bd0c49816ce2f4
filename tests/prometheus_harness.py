"""A real Prometheus server for tests: its own config, data directory and free port."""

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from service.kafka.broker import free_port


class PrometheusServer:
    """`prometheus` scraping `targets` as job `pixelwatch` every `interval`, with `rule_files`."""

    def __init__(
        self, workdir: Path, targets: list[str], rule_files: list[Path], interval: str = "1s"
    ) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: run deploy/prometheus-setup.sh"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {"job_name": "pixelwatch", "static_configs": [{"targets": targets}]},
            ],
        }
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = workdir / "prometheus.log"
        self._handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self._handle,
            stderr=subprocess.STDOUT,
        )

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._handle.close()

    async def wait_ready(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.process.poll() is None, f"prometheus exited:\n{self.log.read_text()}"
                try:
                    async with session.get(f"{self.url}/-/ready") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "prometheus did not become ready"
                await asyncio.sleep(0.2)

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, or fails the test with Prometheus' error."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/{path}", params=params) as response,
        ):
            body = await response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the current time: the vector's samples."""
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns nothing."""
        result = await self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    async def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        data = await self.api(
            "query_range", query=expr, start=str(start), end=str(end), step=str(step)
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    async def wait_for(self, expr: str, expected: float, seconds: float = 60.0) -> None:
        """Poll until the instant query `expr` has the single value `expected`."""
        deadline = time.monotonic() + seconds
        while (got := await self.value(expr)) != expected:
            assert self.process.poll() is None, "prometheus exited"
            assert time.monotonic() < deadline, f"{expr} is {got}, expected {expected}"
            await asyncio.sleep(0.5)
