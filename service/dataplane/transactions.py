"""`exactly_once`: one Kafka transaction per commit interval holds every output and dead letter
of the batches since the last one, and those batches' input offsets (sent with the consumer
group's metadata, KIP-447, so a worker that lost its partitions can never commit them).

    begin (before an interval's first record) -> produce outputs and dead letters
    -> at the commit point: flush -> send the offsets with the group metadata -> commit

A read_committed reader sees a transaction's records only once it commits, and then with
its offsets: a worker killed before the commit leaves nothing visible, and the next owner
answers those inputs once. What can go wrong is one of three kinds:

- retriable (a commit timed out): retried until the transaction's own timeout;
- abortable (a record refused or timed out, offsets refused for a stale generation): the
  transaction aborts, the loop seeks its partitions back to the last committed offsets and
  answers the inputs again in a new transaction. An input whose output the broker refused
  is dead-lettered that time (reason `delivery`), as at_least_once does at once; a dead
  letter too large for the DLQ becomes its truncation marker; a refused shadow record only
  leaves the shadow out of that retry;
- fatal (fenced by a newer producer with the same `transactional.id`, or any fatal producer
  error): the worker stops with one line and commits nothing more.

The loop (loop.py) calls in at four places: before producing (`begin`, `redirect`), at each
commit point (`commit`, or `abort` and a rewind), on a refused record (`refused`), and on
revoke or loss of partitions (`forget`).
"""

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from service.config import Settings
from service.dataplane.decode import WHOLE
from service.dataplane.pipeline import BatchResult, DeadLetter, Reason
from service.errors import PixelwatchError
from service.schemas import HEADER_OFFSET, HEADER_PARTITION

Where = tuple[int, int]  # input partition and offset

FENCED: Final = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
# Delivery reports of records an abort purged: they are answered again, not refused.
PURGED: Final = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
# A record refused because its transaction is failing, not for anything in the record.
FAILING: Final = FENCED | {
    KafkaError._STATE,
    KafkaError._FATAL,
    KafkaError.INVALID_TXN_STATE,
    KafkaError.TRANSACTION_ABORTABLE,
}


class TransactionFatal(PixelwatchError):
    """The transactional producer cannot go on; nothing more may be committed."""


class _Abortable(Exception):
    pass


HUNG_GRACE: Final = 10.0
"""Seconds past its own timeout that a transactional call may take before the worker gives
up on it: librdkafka's send_offsets_to_transaction can block past its timeout when the
group coordinator went away (confluentinc/librdkafka#5456)."""


def bounded(operation: Callable[[float], object], timeout: float, what: str) -> None:
    """Run `operation(timeout)` on a thread of its own and wait at most `timeout` plus
    `HUNG_GRACE`. A call still blocked then is abandoned (its thread is a daemon) and the
    worker stops: a restarted worker fences the hung producer and aborts its transaction."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            operation(timeout)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=call, name=f"pixelwatch-{what}", daemon=True)
    thread.start()
    thread.join(timeout + HUNG_GRACE)
    if not outcome:
        raise TransactionFatal(
            f"{what} did not return within {timeout + HUNG_GRACE:.0f}s; stopping without "
            "committing its transaction"
        )
    if outcome[0] is not None:
        raise outcome[0]


def transactional_id(settings: Settings) -> str:
    """Stable per instance when `PIXELWATCH_GROUP_INSTANCE_ID` is set; otherwise unique per
    run, and a crashed worker's open transaction then lasts until the broker times it out."""
    return settings.transactional_id or f"pixelwatch-{settings.group_id}-{uuid.uuid4().hex}"


def producer_options(settings: Settings, tid: str) -> dict[str, str | int]:
    return {
        "transactional.id": tid,
        "transaction.timeout.ms": int(settings.transaction_timeout * 1000),
    }


def fatal_error(error: KafkaError, tid: str) -> TransactionFatal:
    """The one line a fatal producer error stops the worker with."""
    if error.code() in FENCED:
        return TransactionFatal(
            f"ProducerFenced: another producer took transactional.id {tid} "
            f"({error.name()}); this worker stops without committing its open transaction "
            "(is PIXELWATCH_GROUP_INSTANCE_ID shared by two workers?)"
        )
    return TransactionFatal(
        f"transactional producer failed ({error.name()}: {error.str()}); "
        "stopping without committing its open transaction"
    )


@dataclass
class Redirects:
    """What the next attempt at aborted inputs does differently."""

    dead: dict[Where, str] = field(default_factory=dict)  # refused output -> DLQ, this text
    markers: set[Where] = field(default_factory=set)  # dead letter too large -> its marker
    no_shadow: bool = False  # a shadow record was refused: no shadow verdicts in the retry

    def prune(self, done: Callable[[Where], bool]) -> None:
        self.dead = {w: t for w, t in self.dead.items() if not done(w)}
        self.markers = {w for w in self.markers if not done(w)}


class Transactions:
    """The data plane's transactional producer: begin, commit, abort, and why it aborts."""

    def __init__(self, producer: Producer, tid: str, timeout: float) -> None:
        self.producer = producer
        self.tid = tid
        self.timeout = timeout
        self.open = False
        self.doomed: str | None = None  # why the open transaction must abort
        self.redirects = Redirects()
        self.committed = 0
        self.aborted = 0

    def init(self, timeout: float) -> None:
        """Register the id with the coordinator: fences any older producer with it and
        aborts its open transaction (a killed predecessor's), before this one consumes."""
        self._call("init_transactions", self.producer.init_transactions, time.monotonic() + timeout)

    def begin(self) -> None:
        if not self.open:
            self._call("begin_transaction", lambda _: self.producer.begin_transaction(), 0.0)
            self.open = True

    def doom(self, why: str) -> None:
        """The open transaction must abort (a late report after an abort dooms nothing)."""
        if self.open and self.doomed is None:
            self.doomed = why

    def commit(self, offsets: list[TopicPartition], group: object) -> bool:
        """Commit the open transaction with `offsets`; False: it was aborted instead (`doomed`
        says why), and its inputs must be answered again."""
        if self.doomed is not None:
            return False
        deadline = time.monotonic() + self.timeout
        producer = self.producer
        try:
            if offsets:
                self._call(
                    "send_offsets_to_transaction",
                    lambda t: producer.send_offsets_to_transaction(offsets, group, t),
                    deadline,
                )
            self._call("commit_transaction", producer.commit_transaction, deadline)
        except _Abortable as exc:
            self.doom(str(exc))
            return False
        self.open = False
        self.committed += 1
        done = {(tp.partition, tp.offset) for tp in offsets}
        self.redirects.prune(lambda w: any(w[0] == p and w[1] < o for p, o in done))
        if self.redirects.no_shadow:
            self.redirects.no_shadow = False
        return True

    def abort(self) -> None:
        """Abort the open transaction: none of its records becomes visible."""
        if self.open:
            try:
                self._call(
                    "abort_transaction",
                    self.producer.abort_transaction,
                    time.monotonic() + self.timeout,
                )
            except _Abortable as exc:
                raise TransactionFatal(f"cannot abort a transaction: {exc}") from None
        self.open = False
        self.doomed = None
        self.aborted += 1

    def forget(self, partitions: set[int]) -> None:
        """Partitions gone to another worker: it answers them, with its own refusals."""
        self.redirects.prune(lambda w: w[0] in partitions)

    # ---- a refused record, and the retry that answers its input differently ----

    def refused_output(self, where: Where, text: str) -> None:
        self.redirects.dead.setdefault(where, text)

    def refused_dead_letter(self, headers: dict[str, str | bytes | None]) -> bool:
        """A dead letter too large for the DLQ: its retry sends the marker. False: its input
        is unknown."""
        try:
            where = (int(headers[HEADER_PARTITION] or ""), int(headers[HEADER_OFFSET] or ""))
        except (KeyError, ValueError):
            return False
        self.redirects.markers.add(where)
        return True

    def marked(self, message: Message) -> bool:
        return (int(message.partition() or 0), int(message.offset() or 0)) in self.redirects.markers

    def redirect(self, result: BatchResult) -> None:
        """In a retry: the outputs of inputs the broker refused before are replaced by one
        dead letter of the whole input each (as at_least_once replaces them)."""
        dead = self.redirects.dead
        if not dead:
            return
        hits = {
            (int(m.partition() or 0), int(m.offset() or 0)): (position, m)
            for position, m in enumerate(result.messages)
            if (int(m.partition() or 0), int(m.offset() or 0)) in dead
        }
        if not hits:
            return
        result.drop_outputs_of({position for position, _ in hits.values()})
        for where, (_, message) in hits.items():
            result.dead.append(DeadLetter(message, WHOLE, Reason.DELIVERY, dead[where]))

    # ---- librdkafka's transactional calls, by kind of failure ----

    def _call(self, what: str, operation: Callable[[float], object], deadline: float) -> None:
        while True:
            try:
                bounded(operation, max(1.0, deadline - time.monotonic()), what)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal() or error.code() in FENCED:
                    raise fatal_error(error, self.tid) from None
                if error.txn_requires_abort():
                    raise _Abortable(f"{what}: {error.name()}: {error.str()}") from None
                if error.retriable() and time.monotonic() < deadline:
                    continue
                if what in ("init_transactions", "begin_transaction"):
                    raise TransactionFatal(
                        f"{what} failed: {error.name()}: {error.str()}"
                    ) from None
                raise _Abortable(f"{what}: {error.name()}: {error.str()}") from None
