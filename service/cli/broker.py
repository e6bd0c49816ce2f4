"""`pixelwatch broker`: a local single-node Apache Kafka for development, until Ctrl-C."""

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from service.kafka.broker import KAFKA_VERSION, BrokerError, LocalBroker


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=9092, help="client port (default: 9092)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".kafka/data"),
        help="where topics are kept across runs (default: .kafka/data)",
    )


def run(args: argparse.Namespace) -> int:
    broker = LocalBroker(port=args.port, data_dir=Path(args.data_dir).resolve())
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    try:
        broker.start()
        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        print(
            f"Kafka {KAFKA_VERSION} broker ready on {broker.bootstrap} "
            f"(data: {broker.data_dir}, log: {broker.log_file}) — Ctrl-C to stop",
            flush=True,
        )
        try:
            # A timeout keeps the main thread returning to Python so signal handlers run.
            while not stopping.wait(0.5):
                if not broker.running:
                    raise BrokerError(f"Kafka stopped unexpectedly; see {broker.log_file}")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        broker.stop()
    return 0
