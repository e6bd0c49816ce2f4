"""A real Jaeger (all-in-one, in memory) for the tracing tests: it receives OTLP over HTTP and
serves what it received on its query API. Built by deploy/jaeger-setup.sh (`make jaeger`)."""

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Final

import yaml

from service.kafka.broker import free_port
from worker_harness import REPO

SETUP: Final = REPO / "deploy" / "jaeger-setup.sh"


def jaeger_binary() -> Path:
    """The binary deploy/jaeger-setup.sh builds; it fails the test, in one line, if absent."""
    path = Path(
        subprocess.run(
            ["bash", str(SETUP), "--path"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    assert path.is_file(), f"{path} is missing: run `make jaeger` (deploy/jaeger-setup.sh) first"
    return path


def config(otlp_http: int, query_http: int, query_grpc: int) -> dict[str, Any]:
    """Jaeger v2's configuration (an OpenTelemetry Collector's): OTLP/HTTP in, memory
    storage, the query API; every port on 127.0.0.1, and no telemetry port of its own."""
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {"receivers": ["otlp"], "exporters": ["jaeger_storage_exporter"]}
            },
            "telemetry": {
                "metrics": {"level": "none"},
                "traces": {"level": "none"},
                "logs": {"level": "info"},
            },
        },
        "extensions": {
            "jaeger_storage": {"backends": {"memory": {"memory": {"max_traces": 10_000}}}},
            "jaeger_query": {
                "storage": {"traces": "memory"},
                # On by default: it would send Jaeger's own spans to localhost:4317.
                "enable_tracing": False,
                "http": {"endpoint": f"127.0.0.1:{query_http}"},
                "grpc": {"endpoint": f"127.0.0.1:{query_grpc}"},
            },
        },
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{otlp_http}"}}}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memory"}},
    }


class Jaeger:
    """Jaeger on free loopback ports; use as a context manager."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.otlp_port, self.query_port = free_port(), free_port()
        self.log = workdir / "jaeger.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def otlp_endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces)."""
        return f"http://127.0.0.1:{self.otlp_port}"

    def __enter__(self) -> "Jaeger":
        binary = jaeger_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "jaeger.yaml"
        path.write_text(yaml.safe_dump(config(self.otlp_port, self.query_port, free_port())))
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(
                [str(binary), "--config", str(path)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:
            assert self._process.poll() is None, f"jaeger exited:\n{self.output()[-3000:]}"
            try:
                self.get("/api/services")
                return self
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"jaeger not up:\n{self.output()[-3000:]}"
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.query_port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def spans(self, service: str) -> list[dict[str, Any]]:
        """Every span Jaeger holds for `service`, as its query API (v1 JSON) gives them."""
        try:
            found = self.get("/api/traces", service=service, limit="1000", lookback="1h")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # no trace of that service yet
                return []
            raise
        return [span for trace in found.get("data") or [] for span in trace["spans"]]
