"""What the worker is measured against, each run as its own process by bench.py.

- librdkafka:  the Kafka client's own limit, as the worker uses it: confluent-kafka
               `consume(1000)`, one `produce` per input, `poll`, asynchronous commit.
- aiokafka:    the same passthrough on aiokafka (faust's client): batched `getmany`, sends
               not awaited one by one, a commit per second after the sends are acknowledged.
- faust_agent: the worker as it was before its data path left faust: a faust agent taking
               batches of events (`take_events`), the same BatchScorer, outputs through
               faust's producer, faust's acks and commits. Kept here, not in service/.
"""

import argparse
import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Message, Producer

COMMIT_SECONDS = 1.0


def librdkafka(args: argparse.Namespace) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
    consumer.subscribe([args.input])
    while True:
        messages = consumer.consume(1000, 0.1)
        for message in messages:
            if message.error() is not None:
                continue
            while True:
                try:
                    producer.produce(args.output, message.value(), message.key())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        if messages:
            consumer.commit(asynchronous=True)


async def aiokafka(args: argparse.Namespace) -> None:
    consumer = AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    pending: list[asyncio.Future[Any]] = []
    last_commit = time.monotonic()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            for records in batches.values():
                for r in records:
                    pending.append(await producer.send(args.output, value=r.value, key=r.key))
            if time.monotonic() - last_commit > COMMIT_SECONDS and pending:
                # at-least-once: outputs acknowledged before their offsets are committed
                await asyncio.gather(*pending)
                pending.clear()
                await consumer.commit()
                last_commit = time.monotonic()
    finally:
        await producer.stop()
        await consumer.stop()


def quiet_monitor() -> type:
    """faust's Monitor with its per-message and per-event bookkeeping left out.

    The `faust_agent_quiet_monitor` contender measures what that bookkeeping costs: faust
    calls these hooks for every message, event and send.
    """
    from faust.sensors import Monitor

    class QuietMonitor(Monitor):
        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            pass

        def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
            return None

        def on_stream_event_out(
            self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
        ) -> None:
            pass

        def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
            pass

        def on_send_initiated(
            self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
        ) -> Any:
            return None

        def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
            pass

    return QuietMonitor


def faust_agent(args: argparse.Namespace) -> None:
    """The previous worker design: scoring inside a faust agent (model from PIXELWATCH_MODEL).

    faust's compiled stream iterator is used when installed (faust-streaming's wheels ship
    it) unless NO_CYTHON is set; `--quiet-monitor` swaps in `quiet_monitor()`.
    """
    import faust

    from service.config import Settings
    from service.dataplane.pipeline import BatchScorer
    from service.scoring.model import load_model

    settings = Settings(input_topic=args.input, scores_topic=args.output, group_id=args.group)
    model = load_model(settings.model)
    scorer = BatchScorer(model)
    monitor: dict[str, Any] = {"Monitor": quiet_monitor()} if args.quiet_monitor else {}
    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        broker_commit_interval=settings.commit_interval,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        store="memory://",
        datadir=args.datadir,
        web_enabled=False,
        stream_buffer_maxsize=max(4096, 2 * settings.batch_size),
        **monitor,
    )
    images = app.topic(
        args.input, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )

    def message(event: Any) -> Message:
        m = event.message
        return Message(
            topic=m.topic,
            partition=m.partition,
            offset=m.offset,
            key=m.key,
            value=m.value,
            timestamp=(TIMESTAMP_CREATE_TIME, int(m.timestamp * 1000)),
        )

    @app.agent(images, name="score")
    async def score(stream: Any) -> None:
        batches = stream.take_events(settings.batch_size, within=settings.batch_window)
        async for events in batches:
            result = scorer.process([message(e) for e in events])
            send = app.producer.send
            # Enqueued without awaiting each delivery; faust flushes before it commits.
            for key, value in result.scores:
                await send(args.output, key, value, None, None, None)
            for key, value in result.anomalies:
                await send(f"{args.output}-anomalies", key, value, None, None, None)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=["librdkafka", "aiokafka", "faust_agent"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--datadir", default="/tmp/pixelwatch-bench-faust")
    parser.add_argument("--quiet-monitor", action="store_true")
    args = parser.parse_args()
    if args.name == "librdkafka":
        librdkafka(args)
    elif args.name == "aiokafka":
        asyncio.run(aiokafka(args))
    else:
        faust_agent(args)


if __name__ == "__main__":
    main()
