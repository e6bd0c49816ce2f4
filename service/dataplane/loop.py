"""The image topic's consumer loop on librdkafka, run in a thread of its own.

    consume a batch -> decode, one ONNX call, encode -> produce every output and dead letter
    -> ... every `commit_interval`: a barrier (flush: every record confirmed or replaced)
    -> commit the offsets of every batch before it

So a committed offset always has its outputs in Kafka: at-least-once delivery. With
`PIXELWATCH_PROCESSING_GUARANTEE=exactly_once` each commit is a Kafka transaction instead
(transactions.py): outputs and offsets become visible together, or not at all. Everything
runs on this one thread: the consumer's rebalance callbacks fire inside `consume`, the
producer's (failure-only) delivery callbacks inside `poll` and `flush`, so the ledger needs
no lock. Between barriers the loop never waits for deliveries; it passes a barrier early when
`max_in_flight` messages are unconfirmed, and always before giving up a partition.

An output the broker refuses (too large, topic gone, not authorised), once librdkafka's own
retries end after `delivery_timeout`, is replaced by a dead letter of its input with reason
`delivery`. A dead letter that cannot be delivered either stops the worker without
committing its batch: nothing is ever acknowledged that is not somewhere in Kafka.
"""

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from service.config import Settings
from service.dataplane.decode import WHOLE
from service.dataplane.ledger import Failure, Ledger, Record, TopicPartitionKey, Unsent
from service.dataplane.pipeline import BatchResult, BatchScorer, DeadLetter, Header, Reason
from service.dataplane.shadow import ShadowScorer
from service.dataplane.status import DataPathStatus
from service.dataplane.tracecontext import Carried, PassRule, carry
from service.dataplane.transactions import (
    FAILING,
    PURGED,
    Transactions,
    fatal_error,
    producer_options,
    transactional_id,
)
from service.errors import PixelwatchError
from service.kafka.options import librdkafka_config
from service.observability.throttle import Throttle
from service.untrusted import clean

log = logging.getLogger("pixelwatch.dataplane")

BatchObserver = Callable[[BatchResult, float], None]
"""Called on the loop's thread after each batch is handed to the producer."""
SwapObserver = Callable[[BatchScorer, ShadowScorer | None], None]
"""Called on the loop's thread when a swap takes effect: the live scorer and the shadow (or
None) that score from this batch boundary on."""
DeliveryObserver = Callable[[str, str, bool], None]
"""Called for each record the broker did not take: (topic, error name, whether a dead letter
of its input was sent in its place)."""

_LOGGED_DEAD_LETTERS: Final = 10  # per batch; the rest are counted in one line
_SIZE_ERRORS: Final = frozenset({KafkaError.MSG_SIZE_TOO_LARGE})


class DataPlaneError(PixelwatchError):
    """The data path cannot go on without losing data; the process must stop."""


class DataPlane:
    """Consumes the input topic and answers every message; `run` blocks until `stop`."""

    def __init__(
        self,
        settings: Settings,
        scorer: BatchScorer,
        *,
        status: DataPathStatus | None = None,
        observers: Sequence[BatchObserver] = (),
        on_delivery_failure: DeliveryObserver | None = None,
        on_lag: Callable[[dict[TopicPartitionKey, int]], None] | None = None,
        on_commit: Callable[[dict[TopicPartitionKey, int]], None] | None = None,
        on_swap: SwapObserver | None = None,
        shadow: ShadowScorer | None = None,
    ) -> None:
        self.settings = settings
        self.scorer = scorer
        self.shadow = shadow
        self._on_swap = on_swap
        self.status = status or DataPathStatus()
        self.observers = list(observers)
        self._on_delivery_failure = on_delivery_failure
        self._on_lag = on_lag
        self._on_commit = on_commit
        self._committed: dict[TopicPartitionKey, int] = {}  # as the broker confirmed
        # What `swap` asked for, taken at the next batch boundary; a lock, not two attributes,
        # so a live model and its shadow always change together.
        self._swap_lock = threading.Lock()
        self._next: tuple[BatchScorer, ShadowScorer | None] | None = None
        self._stopping = threading.Event()
        self._ledger = Ledger()
        self._failures: list[Failure] = []
        self._assigned: set[TopicPartitionKey] = set()
        self._stored: dict[TopicPartitionKey, int] = {}  # safe to commit (after a barrier)
        self._requested: dict[TopicPartitionKey, int] = {}  # sent in a commit request
        self._fatal: BaseException | None = None
        self._throttle = Throttle(1.0)
        self._next_lag = 0.0
        self._next_commit = 0.0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        exactly_once = settings.processing_guarantee == "exactly_once"
        self._tid = transactional_id(settings) if exactly_once else None
        self._eos: Transactions | None = None  # exactly_once: set once the producer runs
        self._held: list[tuple[BatchResult, float]] = []  # for observers, until the commit
        self._pass_rule = PassRule(settings.pass_header_names)

    # ---- control, from any thread ----

    def stop(self) -> None:
        """Finish the batch in hand, deliver everything, commit and leave the group."""
        self._stopping.set()

    def swap(self, scorer: BatchScorer, shadow: ShadowScorer | None = None) -> None:
        """Score with `scorer` (and `shadow` beside it, or no shadow) from the next batch on:
        never half a batch with each. A later call before that boundary replaces this one."""
        with self._swap_lock:
            self._next = (scorer, shadow)

    @property
    def unconfirmed(self) -> int:
        """Consumed messages whose outputs the broker has not confirmed yet."""
        return self._ledger.in_flight

    # ---- configuration ----

    def consumer_config(self) -> dict[str, Any]:
        s = self.settings
        return librdkafka_config(s) | {
            "group.id": s.group_id,
            "client.id": f"pixelwatch-{socket.gethostname()}",
            "auto.offset.reset": s.auto_offset_reset,
            # We commit, after each barrier; librdkafka never commits on its own.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Inputs written in transactions count only once committed (librdkafka's default).
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": int(s.session_timeout * 1000),
            # Heartbeats also carry news of a rebalance: often, so a joining worker gets its
            # partitions within about a second.
            "heartbeat.interval.ms": max(100, min(1000, int(s.session_timeout * 1000 / 3))),
            # librdkafka's prefetch queue keeps its default (64 MB): at 16 MB, fetching paused
            # a second at a time (fetch.queue.backoff.ms) and throughput fell by 40%.
            "on_commit": self._committed_offsets,
            "error_cb": self._client_error,
            "logger": logging.getLogger("pixelwatch.librdkafka"),
            **static_membership(s),
        }

    def producer_config(self) -> dict[str, Any]:
        s = self.settings
        transactional = producer_options(s, self._tid) if self._tid is not None else {}
        return (
            transactional
            | librdkafka_config(s)
            | {
                "client.id": f"pixelwatch-{socket.gethostname()}",
                # Idempotence keeps retries from duplicating or reordering outputs.
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": int(s.delivery_timeout * 1000),
                # A Python callback per confirmed record would cost more than encoding it: only
                # failures are reported, and barriers (flush) confirm the rest.
                "delivery.report.only.error": True,
                "on_delivery": self._delivered,
                "queue.buffering.max.messages": max(100_000, 4 * s.max_in_flight),
                "error_cb": self._producer_error,
                "logger": logging.getLogger("pixelwatch.librdkafka"),
            }
        )

    # ---- the loop ----

    def run(self) -> None:
        consumer = self._consumer = Consumer(self.consumer_config())
        producer = self._producer = Producer(self.producer_config())
        try:
            if self._tid is not None:
                self._eos = Transactions(producer, self._tid, self.settings.transaction_timeout)
                if self.settings.transactional_id is None:
                    log.warning(
                        "exactly_once without PIXELWATCH_GROUP_INSTANCE_ID: transactional.id "
                        "%s is new each run, so a killed worker's open transaction holds up "
                        "its partitions until the broker aborts it (%.0f s)",
                        self._tid, self.settings.transaction_timeout,
                    )  # fmt: skip
                self._eos.init(self.settings.connect_timeout)
            consumer.subscribe(
                [self.settings.input_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            while not self._stopping.is_set():
                self._step(consumer)
            self._settle("shutdown", self._assigned)
        except BaseException as exc:
            self.status.crashed(exc)
            raise
        finally:
            self.status.set_assigned(0)
            try:
                consumer.close()  # leaves the group (auto-commit is off: commits nothing)
            except KafkaException as exc:
                log.warning("closing the consumer: %s", exc)

    def _step(self, consumer: Consumer) -> None:
        s = self.settings
        messages = consumer.consume(s.batch_size, s.batch_window)
        self._raise_fatal()
        self._take_swap()  # a batch boundary: swap here and only here
        good = [m for m in messages if m.error() is None] if messages else []
        if len(good) != len(messages):
            for message in messages:
                error = message.error()
                if error is not None:
                    self._client_error(error)
        if good:
            self._handle(good)
        producer = self._producer
        assert producer is not None
        producer.poll(0)
        self._replace_failures()
        if self._eos is not None and self._eos.doomed is not None:
            self._abort("transaction")  # no use going on with it: answer its inputs again
        now = time.monotonic()
        if self._ledger.in_flight and (
            now >= self._next_commit or self._ledger.in_flight > s.max_in_flight
        ):
            self._settle("commit", self._assigned, asynchronous=True)
            self._next_commit = time.monotonic() + s.commit_interval
        if now >= self._next_lag:
            self._next_lag = now + s.lag_interval
            self._refresh_lag(consumer)

    def _take_swap(self) -> None:
        if self._next is None:
            return
        with self._swap_lock:
            pending, self._next = self._next, None
        if pending is None:
            return
        self.scorer, self.shadow = pending
        if self._on_swap is not None:
            self._on_swap(self.scorer, self.shadow)

    def _handle(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        result = self.scorer.process(messages)
        result.carried = carry(messages, self._pass_rule)
        self._ledger.open(messages)
        eos = self._eos
        if eos is not None:
            eos.begin()
            eos.redirect(result)
        s = self.settings
        headers, carried = result.headers, result.carried
        if carried is not None:  # some inputs hand a trace context or headers on
            if s.scores_enabled:
                self._produce_carried(
                    s.scores_topic, result.scores, result.scores_from(), headers, carried
                )
            self._produce_carried(
                s.anomalies_topic, result.anomalies, result.anomalies_from(), headers, carried
            )
        else:
            if s.scores_enabled:
                for key, value in result.scores:
                    self._produce(s.scores_topic, key, value, headers)
            for key, value in result.anomalies:
                self._produce(s.anomalies_topic, key, value, headers)
        if result.dead:
            self._dead_letters(result.dead, result.detected_at)
        if self.shadow is not None and result.scored and not (eos and eos.redirects.no_shadow):
            self._shadow(self.shadow, result)
        elapsed = time.perf_counter() - started
        self.status.progressed()
        if eos is not None:
            # The page, the metrics and the drift window see what read_committed readers see:
            # a batch once its transaction commits, and an aborted one only when retried.
            self._held.append((result, elapsed))
            return
        for observe in self.observers:
            observe(result, elapsed)

    def _shadow(self, shadow: ShadowScorer, result: BatchResult) -> None:
        """Score the batch with the shadow too and send its verdicts. A refused shadow record
        costs only itself (see `_replace`): it never holds up a commit."""
        try:
            verdicts = shadow.score(self.scorer, result)
        except Exception as exc:
            suffix = self._throttle.suffix(f"shadow:{type(exc).__name__}")
            if suffix is not None:
                log.error(
                    "shadow model %s failed on a batch of %d: %s%s",
                    shadow.version, result.scored, clean(f"{type(exc).__name__}: {exc}"), suffix,
                )  # fmt: skip
            return
        result.shadow = verdicts
        topic = self.settings.shadow_topic
        if result.carried is not None:  # a verdict per scored image, as `rows` says whose
            self._produce_carried(
                topic, verdicts.records, result.rows, verdicts.headers, result.carried
            )
            return
        for key, value in verdicts.records:
            self._produce(topic, key, value, verdicts.headers)

    def _produce_carried(
        self,
        topic: str,
        records: list[tuple[bytes, bytes]],
        origins: list[int],
        headers: list[Header],
        carried: list[Carried | None],
    ) -> None:
        """Produce records whose inputs may hand headers on: `origins[i]` is the batch
        position of record i's input. Our headers come first, and none of the input's can
        be one of ours."""
        for (key, value), position in zip(records, origins, strict=True):
            extra = carried[position]
            own = headers if extra is None else headers + extra.headers()
            self._produce(topic, key, value, own)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[Header] | None,
    ) -> None:
        producer = self._producer
        assert producer is not None
        while True:
            try:
                producer.produce(topic, value, key, headers=headers)
            except BufferError:
                # The producer's queue is full: serve deliveries until there is room.
                producer.poll(0.1)
                continue
            except KafkaException as exc:
                if self._eos is not None and exc.args[0].code() in FAILING:
                    self._eos.doom(f"{topic}: {exc.args[0].name()}")  # the transaction fails
                    return
                # Refused before it was queued (a topic deleted under us, a record over the
                # size limit): replaced like a record the broker refused later.
                self._failures.append(Failure(exc.args[0], Unsent(topic, key, value, headers)))
            return

    def _dead_letters(self, dead: list[DeadLetter], failed_at: str) -> None:
        for n, letter in enumerate(dead):
            if n < _LOGGED_DEAD_LETTERS:
                log.warning("%s -> DLQ (%s): %s", letter.where, letter.reason.value, letter.text)
            self._produce_dead(letter, letter.headers(failed_at), letter.payload())
        if len(dead) > _LOGGED_DEAD_LETTERS:
            more = len(dead) - _LOGGED_DEAD_LETTERS
            log.warning("... and %d more dead letters in this batch (see the DLQ)", more)

    def _produce_dead(
        self,
        letter: DeadLetter,
        headers: list[Header],
        value: bytes | None,
    ) -> None:
        # A refusal, at once or later, is handled by `_replace` (the truncation marker, or a stop).
        if self._eos is not None and value is not None and self._eos.marked(letter.message):
            value = marker(value)
        self._produce(self.settings.dlq_topic, letter.message.key(), value, headers)

    # ---- confirmations ----

    def _delivered(self, error: KafkaError | None, record: Message) -> None:
        """The producer's delivery callback, for failures only (inside poll/flush, on this
        thread). One callback for all records: a callable per record costs too much."""
        if error is not None:
            self._failures.append(Failure(error, record))

    def _replace_failures(self) -> None:
        """Replace every refused record reported so far (which may be refused in turn)."""
        while self._failures:
            failures = self._failures[:]
            self._failures.clear()
            for failure in failures:
                self._replace(failure)

    def _barrier(self, why: str) -> None:
        """Wait until no produced record is unconfirmed, then mark every batch so far safe.

        Refused records are replaced (which produces more) until a flush finds nothing left
        and nothing refused. A fatal refusal raises: nothing more is marked safe.
        """
        producer = self._producer
        assert producer is not None
        deadline = time.monotonic() + self.settings.delivery_timeout + 30.0
        while True:
            left = producer.flush(0.5)
            self._replace_failures()
            self._raise_fatal()
            if left == 0 and len(producer) == 0 and not self._failures:
                break
            if time.monotonic() > deadline:
                raise DataPlaneError(
                    f"{why}: {self._ledger.in_flight} messages' outputs still unconfirmed "
                    f"after {self.settings.delivery_timeout + 30:.0f}s; not committing them"
                )
        safe = self._ledger.settle()
        self._stored.update({k: o for k, o in safe.items() if k in self._assigned})

    def _replace(self, failure: Failure) -> None:
        record, error = failure.record, failure.error
        if self._eos is not None and not isinstance(record, Unsent):
            # In a transaction, a record the broker refused fails the whole transaction.
            self._refused_in_transaction(self._eos, failure)
            return
        topic = str(record.topic())
        value = record.value()
        if topic == self.settings.shadow_topic:
            # A shadow's verdicts are advisory: counted and logged, never replaced.
            self._delivery_failed(topic, error, False)
            suffix = self._throttle.suffix(f"shadow-delivery:{error.code()}")
            if suffix is not None:
                log.warning("a shadow record to %s was refused: %s%s", topic, error.name(), suffix)
            return
        if topic == self.settings.dlq_topic:
            self._delivery_failed(topic, error, False)
            if error.code() in _SIZE_ERRORS and value is not None and not is_marker(value):
                # Too large for the DLQ topic: keep the headers, replace the value.
                self._produce(topic, record.key(), marker(value), _pairs(record))
                return
            # The batch stays unsettled for good: its offsets are never stored or committed.
            self._fatal = DataPlaneError(
                f"dead-letter topic {topic} refused a record ({error.name()}: "
                f"{clean(error.str())}); stopping without committing its batch"
            )
            return
        source = _source_of(value, self._ledger)
        if source is None:
            self._fatal = DataPlaneError(
                f"an output to {topic} failed ({error.name()}) and its input is unknown"
            )
            return
        message, index = source
        where = (message.partition(), message.offset())
        if where in self._ledger.replaced:  # its other output failed too: one dead letter will do
            self._delivery_failed(topic, error, False)
            return
        self._ledger.replaced.add(where)
        self._delivery_failed(topic, error, True)
        image = "" if index == WHOLE else f" (image {index})"
        text = clean(f"output{image} to {topic} refused: {error.name()}: {error.str()}", 300)
        suffix = self._throttle.suffix(f"delivery:{topic}:{error.code()}")
        if suffix is not None:
            log.error(
                "%s[%s]@%s -> DLQ (delivery): %s%s",
                message.topic(), message.partition(), message.offset(), text, suffix,
            )  # fmt: skip
        # The whole input goes to the DLQ, so a replay answers every image of it again.
        letter = DeadLetter(message, WHOLE, Reason.DELIVERY, text)
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        self._produce_dead(letter, letter.headers(now), letter.payload())

    def _refused_in_transaction(self, eos: Transactions, failure: Failure) -> None:
        """Note what the retry of the aborted inputs does instead of the refused record."""
        record, error = failure.record, failure.error
        if error.code() in PURGED:
            return  # an aborted transaction's record: it is answered again
        topic, value = str(record.topic()), record.value()
        eos.doom(f"{topic} refused a record: {error.name()}")
        if error.code() in FAILING:
            return
        if topic == self.settings.shadow_topic:
            self._delivery_failed(topic, error, False)
            eos.redirects.no_shadow = True
        elif topic == self.settings.dlq_topic:
            self._delivery_failed(topic, error, False)
            headers = dict(_pairs(record))
            too_large = error.code() in _SIZE_ERRORS and not is_marker(value or b"")
            if too_large and eos.refused_dead_letter(headers):
                return
            self._fatal = DataPlaneError(
                f"dead-letter topic {topic} refused a record ({error.name()}: "
                f"{clean(error.str())}); stopping without committing its batch"
            )
        else:
            source = _source_of(value, self._ledger)
            if source is None:
                self._fatal = DataPlaneError(
                    f"an output to {topic} failed ({error.name()}) and its input is unknown"
                )
                return
            message, index = source
            self._delivery_failed(topic, error, True)
            image = "" if index == WHOLE else f" (image {index})"
            text = clean(f"output{image} to {topic} refused: {error.name()}: {error.str()}", 300)
            eos.refused_output((int(message.partition() or 0), int(message.offset() or 0)), text)

    def _settle(
        self, why: str, partitions: set[TopicPartitionKey], asynchronous: bool = False
    ) -> None:
        """A commit point: commit what is confirmed (at_least_once), or the transaction."""
        if self._eos is None:
            self._barrier(why)
            self._commit(partitions, asynchronous)
        else:
            self._transact(self._eos, why, partitions)

    def _transact(self, eos: Transactions, why: str, keep: set[TopicPartitionKey]) -> None:
        """Commit the open transaction with its batches' offsets, or abort it and rewind.
        `keep`: the partitions that stay here (a revoke's others are leaving)."""
        if not eos.open:
            return
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        # librdkafka times every record out after the delivery timeout: waiting longer is idle.
        deadline = time.monotonic() + self.settings.delivery_timeout + 5.0
        while eos.doomed is None:
            left = producer.flush(0.5)
            self._replace_failures()
            self._raise_fatal()
            if left == 0 and len(producer) == 0 and not self._failures:
                break
            if time.monotonic() > deadline:
                eos.doom(f"outputs unconfirmed after {self.settings.delivery_timeout + 5:.0f}s")
        pending = self._ledger.pending()
        offsets = [
            TopicPartition(t, p, o) for (t, p), o in pending.items() if (t, p) in self._assigned
        ]
        if eos.commit(offsets, consumer.consumer_group_metadata()):
            self._ledger.settle()
            self._committed_offsets(None, offsets)
            held, self._held = self._held, []
            for result, elapsed in held:
                for observe in self.observers:
                    observe(result, elapsed)
            return
        self._abort(why, keep)

    def _abort(self, why: str, keep: set[TopicPartitionKey] | None = None) -> None:
        """Abort the transaction; seek the partitions that stay back to their first offset in
        it, so its inputs are consumed and answered again."""
        eos, consumer = self._eos, self._consumer
        assert eos is not None and consumer is not None
        self._replace_failures()  # what the retry must do differently
        self._raise_fatal()
        reason, count = eos.doomed or why, self._ledger.in_flight
        eos.abort()
        self._held.clear()
        self._failures.clear()  # the aborted records' reports: they are answered again
        stays = self._assigned if keep is None else keep & self._assigned
        back = [
            TopicPartition(t, p, o)
            for (t, p), o in self._ledger.rewind().items()
            if (t, p) in stays
        ]
        for tp in back:
            try:
                consumer.seek(tp)
            except KafkaException as exc:
                raise DataPlaneError(
                    f"{tp.topic}[{tp.partition}]: cannot seek back to {tp.offset} after an "
                    f"aborted transaction ({exc.args[0].name()}); stopping without committing"
                ) from None
        suffix = self._throttle.suffix("abort")
        if suffix is not None:
            log.warning(
                "%s: transaction aborted (%s); %d messages are answered again%s",
                why, clean(reason), count, suffix,
            )  # fmt: skip

    def _delivery_failed(self, topic: str, error: KafkaError, dead_lettered: bool) -> None:
        if self._on_delivery_failure is not None:
            self._on_delivery_failure(topic, error.name(), dead_lettered)

    def _commit(self, partitions: set[TopicPartitionKey], asynchronous: bool = False) -> None:
        """Commit what the last barrier made safe (asynchronously: the result reaches the
        commit callback during a later `consume`)."""
        offsets = [
            TopicPartition(t, p, self._stored[(t, p)])
            for t, p in partitions
            if (t, p) in self._stored and self._stored[(t, p)] != self._requested.get((t, p))
        ]
        if not offsets:
            return
        consumer = self._consumer
        assert consumer is not None
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._committed_offsets(None, consumer.commit(offsets=offsets, asynchronous=False))
            self._requested.update({(tp.topic, tp.partition): tp.offset for tp in offsets})
        except KafkaException as exc:
            # Nothing is lost: the next owner re-reads from the last commit (duplicates).
            log.warning("committing %d partitions failed: %s", len(offsets), exc.args[0].str())

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    # ---- rebalance callbacks (inside consume(), on this thread) ----

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        self.status.set_assigned(len(self._assigned))
        self._next_lag = 0.0  # measure the new partitions' lag soon
        if partitions:
            log.info("assigned %s", _names(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        # Deliver what is in flight and commit before another worker takes over: a graceful
        # rebalance re-scores nothing.
        if self._eos is None:
            self._barrier("rebalance")
            self._commit(keys & self._assigned)
        else:  # the whole transaction commits (or aborts) before the partitions go
            self._transact(self._eos, "rebalance", self._assigned - keys)
        self._forget(keys)
        log.info("revoked %s", _names(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        if self._eos is not None and self._eos.open:
            # Its offsets would be refused (a stale generation): abort, keep the others.
            self._abort("lost", self._assigned - keys)
        self._ledger.forget(keys)
        self._forget(keys)
        log.warning("lost %s (session timed out); another worker re-reads them", _names(partitions))

    def _forget(self, keys: set[TopicPartitionKey]) -> None:
        self._assigned -= keys
        if self._eos is not None:
            self._eos.forget({p for _, p in keys})
        for key in keys:
            self._stored.pop(key, None)
            self._requested.pop(key, None)
            self._committed.pop(key, None)
        self.status.set_assigned(len(self._assigned))

    # ---- lag and client errors ----

    def _refresh_lag(self, consumer: Consumer) -> None:
        if not self._assigned:
            self.status.set_lag(None)
            if self._on_lag is not None:
                self._on_lag({})
            return
        lags: dict[TopicPartitionKey, int] = {}
        try:
            unknown = [TopicPartition(*k) for k in self._assigned if k not in self._committed]
            if unknown:
                self._committed_offsets(None, consumer.committed(unknown, timeout=2.0))
            for key in sorted(self._assigned):
                low, high = watermarks(consumer, TopicPartition(*key), self._committed.get(key))
                lags[key] = partition_lag(high, self._committed.get(key), low)
        except KafkaException as exc:
            self._client_error(exc.args[0])
            return
        self.status.set_lag(sum(lags.values()))
        if self._on_lag is not None:
            self._on_lag(lags)

    def _committed_offsets(
        self, error: KafkaError | None, partitions: list[TopicPartition]
    ) -> None:
        """librdkafka's commit callback (inside consume, on this thread): what the group has."""
        log.debug("committed %s (%s)", partitions, error)
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            self._client_error(error)
        done = {
            (tp.topic, tp.partition): tp.offset
            for tp in partitions
            if tp.error is None and tp.offset >= 0 and (tp.topic, tp.partition) in self._assigned
        }
        if done:
            self._committed.update(done)
            if self._on_commit is not None:
                self._on_commit(done)

    def _producer_error(self, error: KafkaError) -> None:
        if _is_fatal(error) and self._tid is not None:  # fenced, most likely: one line says so
            self._fatal = fatal_error(error, self._tid)
            return
        self._client_error(error)

    def _client_error(self, error: KafkaError) -> None:
        """librdkafka's error callback and consume errors: fatal ones stop the loop."""
        if _is_fatal(error):
            self._fatal = DataPlaneError(f"Kafka client error: {error.name()}: {error.str()}")
            return
        suffix = self._throttle.suffix(f"client:{error.code()}")
        if suffix is not None:
            log.warning("Kafka: %s: %s%s", error.name(), clean(error.str()), suffix)


def _is_fatal(error: KafkaError) -> bool:
    """librdkafka reports a fatal error to the error callback as code _FATAL, whose
    `fatal()` flag is not always set (a static member fenced by the group): either counts."""
    return bool(error.fatal()) or error.code() == KafkaError._FATAL


def static_membership(settings: Settings) -> dict[str, Any]:
    """`group.instance.id` when asked for: a worker restarted in place (same pod or container,
    same id) within the session timeout gets its partitions back without a rebalance."""
    instance = settings.instance_id
    return {"group.instance.id": instance} if instance else {}


def watermarks(consumer: Consumer, tp: TopicPartition, committed: int | None) -> tuple[int, int]:
    """A partition's low and high watermarks for its lag, from this consumer's last fetch when
    it has one. Asking the broker waits behind the consumer's own long-polling fetch on the same
    connection (up to fetch.wait.max.ms, 500 ms, a partition) whenever everything available is
    already fetched: the loop stood still for up to 2 s every lag interval. librdkafka refetches
    whenever its queue has room, so the cached high watermark is one fetch old while the loop
    consumes. The broker is asked before the partition's first fetch, while nothing is
    committed there (the lag is then counted from the low watermark, which is not cached), and
    when the cached figure says no lag: a cached high watermark can be older than messages
    already written, and a lag of 0 must not be reported while some wait. When caught up, the
    loop has nothing to hold up."""
    low, high = consumer.get_watermark_offsets(tp, cached=True)
    if high < 0 or committed is None or high <= committed:
        low, high = consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
    return low, high


def partition_lag(highwater: int, committed: int | None, low: int) -> int:
    """Messages behind in one partition: the high watermark minus the committed offset (the
    next one to read). Before the group's first commit there, all that is retained is."""
    done = low if committed is None else committed
    return max(0, highwater - done)


def marker(value: bytes) -> bytes:
    """What a dead letter carries when its input is too large for the DLQ topic."""
    digest = hashlib.sha256(value).hexdigest()
    return orjson.dumps({"pixelwatch_truncated": True, "size": len(value), "sha256": digest})


def is_marker(value: bytes) -> bool:
    return value.startswith(b'{"pixelwatch_truncated":true')


def _pairs(record: Record) -> list[Header]:
    headers = record.headers() or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _source_of(value: bytes | None, ledger: Ledger) -> tuple[Message, int] | None:
    """The consumed message (and image index) an output was made from."""
    try:
        source = orjson.loads(value or b"")["source"]
        partition, offset = int(source["partition"]), int(source["offset"])
        index = int(source.get("index", WHOLE))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    message = ledger.source(partition, offset)
    return None if message is None else (message, index)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
