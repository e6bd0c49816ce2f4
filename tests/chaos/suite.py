"""`make chaos`: the fault suite. Real broker, real workers, real faults, counted from outside.

Each scenario gets fresh topics and a consumer group, streams images into the input topic,
does its harm, and then an independent consumer checks that every input the broker took was
answered (scored, or dead-lettered) and how many were answered twice:

    kill -9 a worker (x3)      two workers; one is killed three times mid-stream and restarted
    SIGTERM                    one worker stopped mid-stream, then another started
    broker kill -9, 20 s down  the broker dies under a running worker and comes back
    two-worker rebalance       a second worker joins mid-stream, then the first stops
    poison set                 ts 1e30, an input just under 1 MiB, a field name with a newline,
                               a 60,000-character field name
    5,000 fuzz messages        seeded random bytes, broken JSON, wrong types, binary pixels
    undeliverable output       a scores topic that refuses every record (max.message.bytes)
    output topic deleted       the scores topic is deleted mid-stream
    kill -9 mid-transaction    (exactly_once) a worker killed just before its commit point

Every scenario runs in both processing guarantees (`--guarantee` picks one). In
exactly_once every worker has a PIXELWATCH_GROUP_INSTANCE_ID (so a stable transactional.id),
a replacement takes its predecessor's, and any duplicate breaks the promise.

Failover is the time from the fault until every input partition was answered again (for the
broker: from its return). Results go to chaos-results/chaos.json and a table.

    python tests/chaos/suite.py [--only NAME ...] [--out chaos-results/chaos.json]
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import count, islice
from pathlib import Path
from typing import Final

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

ROOT: Final = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # run as a script: make the test helpers importable
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from chaos.lab import (  # noqa: E402
    Outgoing,
    Stream,
    Tally,
    create_topic,
    delete_topic,
    tallied,
    wait_for_topics,
)
from chaos.poison import FORGED_LINE, fuzz, poison_set  # noqa: E402
from service.dataplane.loop import is_marker  # noqa: E402
from service.kafka.broker import KAFKA_VERSION, LocalBroker, free_port  # noqa: E402
from service.samples import SEED_TRAIN  # noqa: E402
from worker_harness import WorkerProcess, WorkerTopics, worker_env  # noqa: E402

console = Console(stderr=True, highlight=False)
PARTITIONS: Final = 4
RATE: Final = 400.0  # images per second in the streaming scenarios
FAILOVER_TARGET: Final = 15.0  # seconds, after kill -9


@dataclass
class Result:
    scenario: str
    guarantee: str
    sent: int
    found: int
    duplicates: int
    failover_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # a broken promise: the run fails

    @property
    def lost(self) -> int:
        return self.sent - self.found


@dataclass
class Lab:
    """The broker and model every scenario uses, and where workers keep their files."""

    broker: LocalBroker
    model: Path
    workdir: Path
    guarantee: str = "at_least_once"
    _names: Iterator[int] = field(default_factory=count)
    _workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly_once"

    def worker(self, topics: WorkerTopics, slot: str = "a", **env: str) -> WorkerProcess:
        """A worker; in exactly_once, `slot` is its instance id: a replacement takes the slot
        (and so the transactional.id) of the worker it replaces."""
        n = next(self._names)
        settings = worker_env(self.bootstrap, topics, self.model, self.workdir / f"state-{n}")
        settings |= {"PIXELWATCH_METRICS_HOST": "127.0.0.1"}
        settings |= {"PIXELWATCH_PROCESSING_GUARANTEE": self.guarantee}
        if self.exactly_once:
            settings |= {"PIXELWATCH_GROUP_INSTANCE_ID": f"{topics.run}-{slot}"}
        settings |= env
        worker = WorkerProcess(settings, self.workdir / f"worker-{n}.log")
        self._workers.append(worker)
        return worker

    def kill_workers(self) -> None:
        """Kill what a scenario left running (it raised before stopping its workers)."""
        for worker in self._workers:
            if worker.alive():
                worker.stop(signal.SIGKILL)
        self._workers.clear()


def images(prefix: str, seed: int = 0) -> Iterator[Outgoing]:
    """An endless stream of image messages, about a third of the pixels black."""
    rng = np.random.default_rng(seed)
    for n in count():
        key = f"{prefix}-{n}"
        pixels = (rng.random(64) < 0.3).astype(np.float32)
        value = orjson.dumps({"id": key, "pixels": pixels}, option=orjson.OPT_SERIALIZE_NUMPY)
        yield key.encode(), value, []


def wait_log(worker: WorkerProcess, text: str, timeout: float = 120.0, after: int = 0) -> None:
    """Wait until the worker's log has `text` more than `after` times."""
    deadline = time.monotonic() + timeout
    while worker.output().count(text) <= after:
        if not worker.alive():
            raise RuntimeError(f"the worker exited:\n{worker.output()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in the worker's log within {timeout:.0f}s")
        time.sleep(0.2)


def settle(stream: Stream, tally: Tally, timeout: float = 180.0) -> tuple[int, int, int]:
    """Stop the stream and wait for its answers: (sent, found, duplicates)."""
    stream.stop()
    found = tally.wait_for(stream.acked, timeout)
    time.sleep(2.0)  # late duplicates, if any, are counted too
    return len(stream.acked), len(found), tally.duplicates(stream.acked)


def result_of(lab: Lab, name: str, stream: Stream, tally: Tally, timeout: float = 180.0) -> Result:
    sent, found, duplicates = settle(stream, tally, timeout)
    result = Result(name, lab.guarantee, sent, found, duplicates)
    if stream.failed:
        result.problems.append(f"the stream's producer failed: {stream.failed[:3]}")
    if result.lost:
        result.problems.append(f"{result.lost} inputs have no answer")
    return result


def stop_all(*workers: WorkerProcess) -> list[int]:
    return [w.stop(signal.SIGTERM) for w in workers]


# ---- scenarios ----


def kill9(lab: Lab, kills: int = 3) -> Result:
    topics = WorkerTopics()
    workers = [lab.worker(topics, "a"), lab.worker(topics, "b")]
    wait_for_topics(lab.bootstrap, [topics.images, topics.scores, topics.dlq])
    stream = Stream(lab.bootstrap, topics.images)
    failovers: list[float] = []
    with tallied(lab.bootstrap, [topics.scores, topics.dlq]) as tally:
        stream.start(images("kill9"), RATE)
        for worker in workers:
            wait_log(worker, "assigned")
        time.sleep(5.0)  # both have their partitions and commit
        for n in range(kills):
            victim = n % 2
            killed_at = time.time()
            workers[victim].stop(signal.SIGKILL)
            resumed = tally.resumed(killed_at, PARTITIONS)
            if resumed is None:
                raise RuntimeError("no worker resumed the killed worker's partitions")
            failovers.append(resumed)
            workers[victim] = lab.worker(topics, "ab"[victim])
            wait_log(workers[victim], "assigned")
            time.sleep(3.0)
        result = result_of(lab, f"kill -9 a worker (x{kills})", stream, tally)
        stop_all(*workers)
    result.failover_s = failovers
    result.notes.append(
        "two workers; the killed one's replacement takes its transactional.id"
        if lab.exactly_once
        else "two workers; duplicates are re-reads since the last commit"
    )
    slow = [f for f in failovers if f > FAILOVER_TARGET]
    result.notes.append(
        f"failover target <= {FAILOVER_TARGET:.0f} s: {'missed' if slow else 'met'}"
    )
    return result


def sigterm(lab: Lab) -> Result:
    topics = WorkerTopics()
    first = lab.worker(topics)
    wait_for_topics(lab.bootstrap, [topics.images, topics.scores, topics.dlq])
    stream = Stream(lab.bootstrap, topics.images)
    with tallied(lab.bootstrap, [topics.scores, topics.dlq]) as tally:
        stream.start(images("sigterm"), RATE)
        wait_log(first, "assigned")
        time.sleep(8.0)
        code = first.stop(signal.SIGTERM)  # returns once it has exited
        stopped_at = time.time()
        second = lab.worker(topics, "a")  # a replacement in place
        resumed = tally.resumed(stopped_at, PARTITIONS)
        time.sleep(5.0)
        result = result_of(lab, "SIGTERM", stream, tally)
        stop_all(second)
    if code != 0:
        result.problems.append(f"the stopped worker exited with {code}")
    if result.duplicates:
        result.problems.append("a graceful stop must give no duplicates")
    result.failover_s = [resumed] if resumed is not None else []
    result.notes.append("one worker; failover: from its exit to its replacement's answers")
    return result


def rebalance(lab: Lab) -> Result:
    topics = WorkerTopics()
    first = lab.worker(topics)
    wait_for_topics(lab.bootstrap, [topics.images, topics.scores, topics.dlq])
    stream = Stream(lab.bootstrap, topics.images)
    with tallied(lab.bootstrap, [topics.scores, topics.dlq]) as tally:
        stream.start(images("rebalance"), RATE)
        wait_log(first, "assigned")
        time.sleep(5.0)
        second = lab.worker(topics, "b")
        wait_log(second, "assigned")  # the group rebalanced: two partitions each
        time.sleep(5.0)
        code = first.stop(signal.SIGTERM)  # and again: the second takes all four
        stopped_at = time.time()  # it has exited: what follows is the second worker's
        resumed = tally.resumed(stopped_at, PARTITIONS)
        time.sleep(5.0)
        result = result_of(lab, "two-worker rebalance", stream, tally)
        stop_all(second)
    if code != 0:
        result.problems.append(f"the stopped worker exited with {code}")
    if result.duplicates:
        result.problems.append("a graceful rebalance must give no duplicates")
    result.failover_s = [resumed] if resumed is not None else []
    result.notes.append("a second worker joins, then the first stops; failover: from its exit on")
    return result


def broker_kill(lab: Lab, downtime: float = 20.0) -> Result:
    topics = WorkerTopics()
    worker = lab.worker(topics)
    wait_for_topics(lab.bootstrap, [topics.images, topics.scores, topics.dlq])
    stream = Stream(lab.bootstrap, topics.images)
    with tallied(lab.bootstrap, [topics.scores, topics.dlq]) as tally:
        stream.start(images("broker"), RATE)
        wait_log(worker, "assigned")
        time.sleep(5.0)
        killed_at = time.time()
        lab.broker.kill()
        time.sleep(downtime)
        lab.broker.start()
        back_at = time.time()
        restarted: list[str] = []
        resumed = None
        deadline = time.monotonic() + 180
        while resumed is None and time.monotonic() < deadline:
            resumed = tally.resumed(back_at, PARTITIONS, timeout=2.0)
            if resumed is None and not worker.alive() and lab.exactly_once:
                # What an orchestrator does with a worker that stopped itself: start it again
                # (same instance id, so it fences its predecessor's open transaction).
                restarted.append(stop_line(worker))
                worker = lab.worker(topics, "a")
        time.sleep(5.0)
        result = result_of(lab, f"broker kill -9, {downtime:.0f} s down", stream, tally, 300)
        alive = worker.alive()
        code = worker.stop(signal.SIGTERM)
    for line in restarted:
        result.notes.append(f"the worker stopped itself and was restarted ({line})")
    if not alive:
        result.problems.append(f"the worker died (exit {code})")
    result.failover_s = [resumed] if resumed is not None else []
    lines, peak, causes = outage_log(worker.output(), killed_at, back_at + 10)
    result.notes.append(f"broker back after {back_at - killed_at:.0f} s")
    result.notes.append(
        f"worker log during the outage: {lines} lines, at most {peak}/s over {causes} causes"
    )
    if peak > max(causes, 1):
        result.problems.append(f"{peak} log lines in one second for {causes} causes")
    return result


_LINE_TIME: Final = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
_WORDS: Final = re.compile(r"[A-Za-z_]{3,}")


def outage_log(text: str, start: float, end: float) -> tuple[int, int, int]:
    """Lines the worker logged between `start` and `end` (epoch s): how many, the most in
    one second, and how many causes (lines that differ only in numbers are one cause)."""
    per_second: dict[str, int] = {}
    causes: set[str] = set()
    lines = 0
    for line in text.splitlines():
        match = _LINE_TIME.match(line)
        if not match:
            continue
        moment = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
        if not start - 1 <= moment <= end:
            continue
        lines += 1
        per_second[match.group(1)] = per_second.get(match.group(1), 0) + 1
        causes.add(" ".join(_WORDS.findall(line[match.end() :])[:6]))
    return lines, max(per_second.values(), default=0), len(causes)


def poison(lab: Lab) -> Result:
    topics = WorkerTopics()
    worker = lab.worker(topics)
    wait_for_topics(lab.bootstrap, [topics.images, topics.scores, topics.dlq])
    stream = Stream(lab.bootstrap, topics.images)
    bad = poison_set()
    good = list(islice(images("after-poison"), 20))
    with tallied(lab.bootstrap, [topics.scores, topics.dlq]) as tally:
        stream.send([*bad.values(), *good])
        result = result_of(lab, "poison set", stream, tally, 120)
        reasons = {stream.acked[where].decode(): reason for where, reason in tally.reasons.items()}
        dead = dict(tally.dead)
    result.notes.append(
        "; ".join(f"{what}: {reasons.get(key.decode(), '?')}" for what, (key, _, _) in bad.items())
        + " (its dead letter a truncation marker)"
    )
    if not all(key.decode() in reasons for key, _, _ in bad.values()):
        result.problems.append(f"not every poison message was dead-lettered: {reasons}")
    big = next(w for w, key in stream.acked.items() if key == bad["near-1mib"][0])
    if not is_marker(dead.get(big) or b""):
        result.problems.append("the near-1 MiB dead letter is not a truncation marker")
    log = worker.output()
    if any(line.startswith(FORGED_LINE) for line in log.splitlines()):
        result.problems.append("a field name forged a log line")
    longest = max(len(line) for line in log.splitlines())
    result.notes.append(f"longest log line {longest} characters")
    if longest > 2000:
        result.problems.append("an untrusted string reached the log uncapped")
    if not worker.alive():
        result.problems.append("the worker died")
    stop_all(worker)
    return result


def fuzzing(lab: Lab, messages: int = 5000) -> Result:
    topics = WorkerTopics()
    worker = lab.worker(topics)
    wait_for_topics(lab.bootstrap, [topics.images, topics.scores, topics.dlq])
    stream = Stream(lab.bootstrap, topics.images)
    sent = fuzz(messages)
    by_key = {key: value for key, value, _ in sent}
    with tallied(lab.bootstrap, [topics.scores, topics.dlq]) as tally:
        stream.send(sent)
        result = result_of(lab, f"{messages:,} fuzz messages", stream, tally, 180)
        dead = dict(tally.dead)
    changed = [w for w, value in dead.items() if (value or b"") != by_key[stream.acked[w]]]
    result.notes.append(
        f"{len(dead)} dead letters, {result.found - len(dead)} scored; "
        f"{len(changed)} dead letters differ from their input"
    )
    if changed:
        result.problems.append("a dead letter's bytes differ from its input")
    if not worker.alive():
        result.problems.append("the worker died")
    stop_all(worker)
    return result


def undeliverable(lab: Lab, messages: int = 2000) -> Result:
    topics = WorkerTopics()
    create_topic(lab.bootstrap, topics.scores, PARTITIONS, **{"max.message.bytes": "100"})
    worker = lab.worker(topics)
    wait_for_topics(lab.bootstrap, [topics.images, topics.dlq])
    stream = Stream(lab.bootstrap, topics.images)
    with tallied(lab.bootstrap, [topics.scores, topics.dlq]) as tally:
        stream.send(islice(images("refused"), messages))
        result = result_of(lab, "undeliverable output topic", stream, tally, 180)
        reasons = set(tally.reasons.values())
    result.notes.append(f"dead-letter reasons: {sorted(reasons)}")
    if reasons != {"delivery"}:
        result.problems.append("refused outputs must become dead letters with reason delivery")
    if not worker.alive():
        result.problems.append("the worker died")
    stop_all(worker)
    return result


def deleted_topic(lab: Lab) -> Result:
    topics = WorkerTopics()
    worker = lab.worker(topics, PIXELWATCH_DELIVERY_TIMEOUT="10")
    wait_for_topics(lab.bootstrap, [topics.images, topics.scores, topics.dlq])
    stream = Stream(lab.bootstrap, topics.images)
    with tallied(lab.bootstrap, [topics.scores, topics.dlq]) as tally:
        stream.start(images("deleted"), RATE)
        wait_log(worker, "assigned")
        time.sleep(5.0)
        # Outputs the topic took before its deletion vanish with it, unread by the tally:
        # the stream pauses until everything sent so far is counted, then resumes at once.
        stream.pause()
        tally.wait_for(dict(stream.acked), 60)
        delete_topic(lab.bootstrap, topics.scores)
        stream.resume()
        restarted: list[str] = []
        until = time.monotonic() + 40.0
        while time.monotonic() < until:
            time.sleep(0.5)
            if not worker.alive() and lab.exactly_once:
                restarted.append(stop_line(worker))  # and restarted, as an orchestrator would
                worker = lab.worker(topics, "a", PIXELWATCH_DELIVERY_TIMEOUT="10")
        result = result_of(lab, "output topic deleted mid-stream", stream, tally, 180)
        reasons = sorted(set(tally.reasons.values()))
    for line in restarted:
        result.notes.append(f"the worker stopped itself and was restarted ({line})")
    recreated = subprocess_topics(lab.bootstrap)
    result.notes.append(f"dead-letter reasons: {reasons} (delivery timeout 10 s)")
    if topics.scores in recreated and restarted:
        result.notes.append("the restarted worker created the topic again, at its start-up")
    elif topics.scores in recreated:
        result.problems.append("the deleted topic was created again")
    if not worker.alive():
        result.problems.append("the worker died")
    stop_all(worker)
    return result


def stop_line(worker: WorkerProcess) -> str:
    """A worker's exit code and the line it stopped with."""
    lines = [x for x in worker.output().splitlines() if "data plane stopped" in x]
    why = lines[0].split("data plane stopped: ", 1)[1][:160] if lines else "no line"
    return f"exit {worker.process.returncode}: {why}"


def kill_mid_transaction(lab: Lab, interval: float = 8.0) -> Result:
    """One worker with a long commit interval is killed about a second before its next commit
    point, with most of an interval's outputs in its open transaction; its replacement takes
    its slot."""
    topics = WorkerTopics()
    knobs = {"PIXELWATCH_COMMIT_INTERVAL": str(interval)}
    worker = lab.worker(topics, "a", **knobs)
    wait_for_topics(lab.bootstrap, [topics.images, topics.scores, topics.dlq])
    stream = Stream(lab.bootstrap, topics.images)
    with tallied(lab.bootstrap, [topics.scores, topics.dlq]) as tally:
        stream.start(images("midtxn"), RATE)
        wait_log(worker, "assigned")
        time.sleep(interval + 2.0)
        # A commit becomes visible as a jump in what the tally counts: kill just before the next.
        seen = len(tally.found(stream.acked))
        deadline = time.monotonic() + 3 * interval
        while len(tally.found(stream.acked)) == seen and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(interval - 1.0)
        pending = stream.sent - len(tally.found(stream.acked))
        killed_at = time.time()
        worker.stop(signal.SIGKILL)
        replacement = lab.worker(topics, "a", **knobs)
        resumed = tally.resumed(killed_at, PARTITIONS)
        time.sleep(interval)
        result = result_of(lab, "kill -9 mid-transaction", stream, tally)
        stop_all(replacement)
    result.failover_s = [resumed] if resumed is not None else []
    result.notes.append(
        f"commit interval {interval:.0f} s; killed about 1 s before a commit point with "
        f"{pending:,} acknowledged inputs not yet answered in a committed transaction"
    )
    return result


def subprocess_topics(bootstrap: str) -> set[str]:
    from confluent_kafka.admin import AdminClient

    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


SCENARIOS: Final[dict[str, Callable[[Lab], Result]]] = {
    "kill9": kill9,
    "sigterm": sigterm,
    "broker": broker_kill,
    "rebalance": rebalance,
    "poison": poison,
    "fuzz": fuzzing,
    "undeliverable": undeliverable,
    "deleted": deleted_topic,
    "midtxn": kill_mid_transaction,
}
EXACTLY_ONCE_ONLY: Final = {"midtxn"}
GUARANTEES: Final = ("at_least_once", "exactly_once")


# ---- reporting ----


def markdown(results: list[Result]) -> str:
    rows = [
        "| scenario | guarantee | sent | found | lost | duplicates | failover s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        failover = " / ".join(f"{f:.1f}" for f in r.failover_s) or "-"
        rows.append(
            f"| {r.scenario} | {r.guarantee} | {r.sent:,} | {r.found:,} | {r.lost:,} "
            f"| {r.duplicates:,} "
            f"| {failover} |"
        )
    return "\n".join(rows)


def print_table(results: list[Result]) -> None:
    table = Table(title="pixelwatch fault suite")
    for name in ("scenario", "guarantee", "sent", "found", "lost", "duplicates", "failover s"):
        table.add_column(name, justify="left" if name == "scenario" else "right")
    for r in results:
        failover = " / ".join(f"{f:.1f}" for f in r.failover_s) or "-"
        table.add_row(
            r.scenario,
            r.guarantee,
            f"{r.sent:,}",
            f"{r.found:,}",
            f"{r.lost:,}",
            f"{r.duplicates:,}",
            failover,
        )
    out = Console(highlight=False)
    out.print(table)
    for r in results:
        for note in r.notes:
            out.print(f"{r.scenario} ({r.guarantee}): {note}")
        for problem in r.problems:
            out.print(f"[bold red]{r.scenario} ({r.guarantee}): FAILED: {problem}[/]")
    out.print()
    out.print(markdown(results))


def ensure_model(path: Path) -> None:
    if path.is_file():
        return
    command = [
        sys.executable, "-m", "service.cli", "train", "--data", str(SEED_TRAIN),
        "--out", str(path), "--epochs", "800", "--threshold", "0.6", "--no-progress",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def run(
    names: list[str], workdir: Path, model: Path, guarantees: list[str] | None = None
) -> list[Result]:
    ensure_model(model)
    shutil.rmtree(workdir, ignore_errors=True)  # logs of an earlier run would mix in
    workdir.mkdir(parents=True)
    results: list[Result] = []
    broker = LocalBroker(port=free_port(), data_dir=workdir / "kafka")
    with broker:
        for guarantee in guarantees or list(GUARANTEES):
            (workdir / guarantee).mkdir()  # each mode's worker logs apart
            lab = Lab(broker, model, workdir / guarantee, guarantee)
            for name in names:
                if name in EXACTLY_ONCE_ONLY and not lab.exactly_once:
                    continue
                results.append(scenario(lab, name))
    return results


def scenario(lab: Lab, name: str) -> Result:
    console.print(f"[bold]{name}[/] ({lab.guarantee}) …")
    started = time.monotonic()
    try:
        result = SCENARIOS[name](lab)
    finally:
        lab.kill_workers()
    if lab.exactly_once and result.duplicates:
        result.problems.append(f"{result.duplicates} duplicates in exactly_once")
    console.print(
        f"  {result.sent:,} sent, {result.lost:,} lost, {result.duplicates:,} "
        f"duplicates ({time.monotonic() - started:.0f} s)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=ROOT / "chaos-results" / "chaos.json")
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "chaos" / "seed.onnx")
    parser.add_argument("--guarantee", nargs="+", choices=GUARANTEES, default=list(GUARANTEES))
    args = parser.parse_args(argv)
    workdir = args.out.parent / "work"
    results = run(args.only, workdir, args.model, args.guarantee)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "kafka": KAFKA_VERSION,
        "results": [asdict(r) | {"lost": r.lost} for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results)
    console.print(f"results written to {args.out}")
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
