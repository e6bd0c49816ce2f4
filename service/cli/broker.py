"""`pixelwatch broker`: a local single-node Apache Kafka for development, until Ctrl-C."""

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from service.kafka.broker import KAFKA_VERSION, BrokerError, LocalBroker


class _Interrupted(Exception):
    """SIGINT or SIGTERM before the broker was ready: start() stops the JVM on its way out."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=9092, help="client port (default: 9092)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".kafka/data"),
        help="where topics are kept across runs (default: .kafka/data)",
    )


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a TCP port (1-65535)", file=sys.stderr)
        return 2
    broker = LocalBroker(port=args.port, data_dir=Path(args.data_dir).resolve())
    stopping = threading.Event()
    ready = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        if not ready.is_set():
            # Unwinds start() wherever it is (resolving jars, waiting for the JVM), which
            # kills the JVM it may have launched: no orphan keeps the port and the data dir.
            raise _Interrupted

    # Installed before start(): a signal during start-up must not kill us and orphan Kafka.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        broker.start()
        ready.set()
        print(
            f"Kafka {KAFKA_VERSION} broker ready on {broker.bootstrap} "
            f"(data: {broker.data_dir}, log: {broker.log_file}) — Ctrl-C to stop",
            flush=True,
        )
        # A timeout keeps the main thread returning to Python so signal handlers run.
        while not stopping.wait(0.5):
            if not broker.running:
                raise BrokerError(f"Kafka stopped unexpectedly; see {broker.log_file}")
    except _Interrupted:
        print("stopped while starting", file=sys.stderr)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        ready.set()  # a second signal while stopping must not interrupt the stop
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
