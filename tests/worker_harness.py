"""Runs the real `pixelwatch worker` command against the test broker, and reads its topics."""

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from service.kafka.broker import KAFKA_VERSION, free_port


@dataclass
class WorkerTopics:
    """A fresh set of topic names and a consumer group, so tests never see each other's data."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def images(self) -> str:
        return f"images-{self.run}"

    @property
    def anomalies(self) -> str:
        return f"anomalies-{self.run}"

    @property
    def scores(self) -> str:
        return f"scores-{self.run}"

    @property
    def dlq(self) -> str:
        return f"dlq-{self.run}"

    @property
    def shadow(self) -> str:
        return f"shadow-{self.run}"

    @property
    def models(self) -> str:
        return f"models-{self.run}"

    @property
    def group(self) -> str:
        return f"group-{self.run}"

    def env(self) -> dict[str, str]:
        return {
            "PIXELWATCH_INPUT_TOPIC": self.images,
            "PIXELWATCH_ANOMALIES_TOPIC": self.anomalies,
            "PIXELWATCH_SCORES_TOPIC": self.scores,
            "PIXELWATCH_DLQ_TOPIC": self.dlq,
            "PIXELWATCH_SHADOW_TOPIC": self.shadow,
            "PIXELWATCH_MODELS_TOPIC": self.models,
            "PIXELWATCH_GROUP_ID": self.group,
        }


class WorkerProcess:
    """`pixelwatch worker` in a subprocess; its output goes to a log file for diagnosis."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        args: Iterable[str] = (),
        *,
        command: Sequence[str] = (sys.executable, "-m", "service.cli"),
        cwd: Path | None = None,
        base_env: Mapping[str, str] = os.environ,
    ) -> None:
        """`command` runs pixelwatch (an installed one: its `pixelwatch` script); `env` is
        added to `base_env`."""
        self.env = env
        self.log = log
        self._handle = log.open("ab")
        self.process = subprocess.Popen(
            [*command, "worker", *args],
            cwd=cwd,
            env={**base_env, **env},
            stdout=self._handle,
            stderr=subprocess.STDOUT,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            self._handle.close()
        return code

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_serving(self, timeout: float = 60.0, path: str = "/healthz") -> None:
        """Wait until the worker runs: its HTTP port answers `path` (/healthz: a signal
        before that meets an interpreter still importing, which dies of it; /ready: it also
        holds partitions)."""
        url = f"http://127.0.0.1:{self.env['PIXELWATCH_METRICS_PORT']}{path}"
        deadline = time.monotonic() + timeout
        while True:
            assert self.alive(), f"the worker exited: {self.output()[-2000:]}"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "the worker did not start serving"
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def worker_env(
    bootstrap: str, topics: WorkerTopics, model: Path, data_dir: Path, **extra: str
) -> dict[str, str]:
    return {
        "PIXELWATCH_BOOTSTRAP": bootstrap,
        "PIXELWATCH_MODEL": str(model),
        "PIXELWATCH_DATA_DIR": str(data_dir),
        "PIXELWATCH_METRICS_PORT": str(free_port()),
        "PIXELWATCH_BATCH_WINDOW": "0.02",
        **topics.env(),
        **extra,
    }


Outgoing = tuple[bytes | None, bytes] | tuple[bytes | None, bytes, list[tuple[str, bytes]]]
_EXISTING: set[tuple[str, str]] = set()  # topics seen to exist: never waited for again


async def produce(bootstrap: str, topic: str, messages: Iterable[Outgoing]) -> None:
    """Send (key, value) or (key, value, headers) messages and wait until all are acked.

    The broker creates no topic on demand, so this first waits for `topic` to exist (a worker
    creates its topics at start-up)."""
    if (bootstrap, topic) not in _EXISTING:
        await wait_for_topic(bootstrap, topic, lambda: True)
        _EXISTING.add((bootstrap, topic))
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4_000_000
    )
    await producer.start()
    try:
        futures = []
        for message in messages:
            key, value, *rest = message
            headers = rest[0] if rest else None
            futures.append(await producer.send(topic, value=value, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def pixelwatch_model(bootstrap: str, topics: WorkerTopics, *args: str) -> str:
    """`pixelwatch model ARGS` on the test's topics, in a subprocess, while the test's own
    tasks go on; its output (it must succeed)."""
    env = {**os.environ, "PIXELWATCH_BOOTSTRAP": bootstrap, **topics.env()}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "model", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode()


def metric_samples(worker: "WorkerProcess", name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample named `name` on the worker's /metrics page: (labels, value)."""
    port = worker.env["PIXELWATCH_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [
        (dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metric_value(worker: "WorkerProcess", name: str, **labels: str) -> float | None:
    """One sample from the worker's /metrics page (None: not exported)."""
    found = [value for got, value in metric_samples(worker, name) if got == labels]
    return found[0] if found else None


async def wait_for_topic(
    bootstrap: str, topic: str, alive: Callable[[], bool], timeout: float = 60.0
) -> int:
    """Wait until `topic` exists (the worker creates it); return its partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while topic not in await admin.list_topics():
            assert time.monotonic() < deadline, f"{topic} was not created"
            assert alive(), "the worker exited"
            await asyncio.sleep(0.2)
        [description] = await admin.describe_topics([topic])
        return len(description["partitions"])
    finally:
        await admin.close()


async def consume_until(
    bootstrap: str,
    topics: list[str],
    done: Callable[[dict[str, list[ConsumerRecord]]], bool],
    timeout: float = 60.0,
    alive: Callable[[], bool] = lambda: True,
    isolation_level: str = "read_committed",
) -> dict[str, list[ConsumerRecord]]:
    """Read every partition of `topics` from the start until `done(records)` or timeout:
    as a downstream consumer should, only what committed transactions hold (exactly_once)."""
    partitions = {t: await wait_for_topic(bootstrap, t, alive, timeout) for t in topics}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level
    )
    await consumer.start()
    records: dict[str, list[ConsumerRecord]] = {t: [] for t in topics}
    try:
        consumer.assign([TopicPartition(t, p) for t, n in partitions.items() for p in range(n)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while not done(records):
            counts = {t: len(r) for t, r in records.items()}
            assert time.monotonic() < deadline, f"timed out with {counts}"
            assert alive(), f"the worker exited; got {counts}"
            batch = await consumer.getmany(timeout_ms=200)
            for tp, recs in batch.items():
                records[tp.topic].extend(recs)
        return records
    finally:
        await consumer.stop()


# ---- The deployment files as the containers see them: docker-compose.yml, deploy/Dockerfile ----
# No Docker engine runs the tests, so these helpers derive what a container would run (argv,
# environment, working directory) from the two files, and map container paths and host names
# onto the test machine.

REPO: Final = Path(__file__).resolve().parents[1]
COMPOSE_FILE: Final = REPO / "docker-compose.yml"
DOCKERFILE: Final = REPO / "deploy" / "Dockerfile"

_VARIABLE: Final = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's substitution: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
    `${VAR:?message}` and `${VAR?message}` (defaults are not themselves interpolated)."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value, op, arg = variables.get(name), match["op"], match["arg"] or ""
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":?", "?") and unset:
            raise KeyError(f"${{{name}}} is required: {arg}")
        if op in (":-", "-") and unset:
            return arg
        return value or ""

    return _VARIABLE.sub(substitute, text)


def interpolated(node: Any, variables: Mapping[str, str]) -> Any:
    """Every string value of a loaded YAML document interpolated (keys stay as they are)."""
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [interpolated(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, variables) for key, value in node.items()}
    return node


def load_compose(variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as `docker compose config` sees it with these shell variables."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    result = interpolated(data, variables or {})
    assert isinstance(result, dict)
    return result


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: continuation lines joined, comments dropped."""

    keyword: str  # upper case
    value: str  # everything after the keyword
    line: int

    @property
    def flags(self) -> dict[str, list[str]]:
        """Leading `--name=value` options (`--mount` may repeat)."""
        found: dict[str, list[str]] = {}
        for name, value in re.findall(r"--([a-z-]+)=(\S+)\s", self._flag_part()):
            found.setdefault(name, []).append(value)
        return found

    @property
    def body(self) -> str:
        """The value without its leading options."""
        return self.value[len(self._flag_part()) :].strip()

    def _flag_part(self) -> str:
        match = re.match(r"\s*(?:--[a-z-]+=\S+\s+)*", self.value)
        return match.group(0) if match else ""

    def argv(self) -> list[str]:
        """The exec form (a JSON array) as is; the shell form as `/bin/sh -c BODY`."""
        body = self.body
        if body.startswith("["):
            parsed = json.loads(body)
            assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
            return list(parsed)
        return ["/bin/sh", "-c", body]


@dataclass(frozen=True)
class Stage:
    name: str
    base: str  # the FROM image, or the name of an earlier stage
    instructions: tuple[Instruction, ...]

    def find(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass(frozen=True)
class ImageConfig:
    """What `docker inspect` would report for a built target, as far as the tests need it."""

    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    user: str
    workdir: str
    healthcheck: list[str] | None  # the argv of its CMD, or None


@dataclass(frozen=True)
class Dockerfile:
    args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert len(matches) == 1, f"no single stage named {name}"
        return matches[0]

    def chain(self, target: str) -> list[Stage]:
        """The stages a target is built on, the outermost base first."""
        names = {s.name for s in self.stages}
        chain = [self.stage(target)]
        while chain[0].base in names:
            chain.insert(0, self.stage(chain[0].base))
        return chain

    def image(self, target: str, base_env: Mapping[str, str]) -> ImageConfig:
        """The config of `target`; `base_env` stands for the base image's environment."""
        env = dict(base_env)
        entrypoint: list[str] = []
        cmd: list[str] = []
        user, workdir = "root", "/"
        healthcheck: list[str] | None = None
        for stage in self.chain(target):
            for ins in stage.instructions:
                if ins.keyword == "ENV":
                    for pair in shlex.split(ins.value):
                        key, _, value = pair.partition("=")
                        env[key] = _expand(value, env)
                elif ins.keyword == "ENTRYPOINT":
                    entrypoint, cmd = ins.argv(), []  # Docker resets an inherited CMD
                elif ins.keyword == "CMD":
                    cmd = ins.argv()
                elif ins.keyword == "USER":
                    user = ins.value.strip()
                elif ins.keyword == "WORKDIR":
                    workdir = str(Path(workdir) / _expand(ins.value.strip(), env))
                elif ins.keyword == "HEALTHCHECK":
                    body = ins.body
                    if body.upper() == "NONE":
                        healthcheck = None
                    else:
                        assert body.startswith("CMD "), ins
                        healthcheck = Instruction("CMD", body[4:], ins.line).argv()
        return ImageConfig(entrypoint, cmd, env, user, workdir, healthcheck)


def _expand(text: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), text)


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    logical: list[tuple[int, str]] = []
    current: str | None = None
    start = 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (current is not None and not stripped):
            continue  # comments, also inside continued instructions; blank continuation lines
        if current is None:
            if not stripped:
                continue
            current, start = stripped, number
        else:
            current += line
        if current.rstrip().endswith("\\"):
            current = current.rstrip()[:-1]
        else:
            logical.append((start, current))
            current = None
    assert current is None, "the Dockerfile ends inside a continued instruction"

    args: dict[str, str] = {}
    stages: list[Stage] = []
    pending: list[Instruction] = []
    name, base = "", ""
    for number, text in logical:
        keyword, _, value = text.partition(" ")
        ins = Instruction(keyword.upper(), value.strip(), number)
        if ins.keyword == "FROM":
            if name:
                stages.append(Stage(name, base, tuple(pending)))
            words = ins.body.split()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            pending = []
        elif not name:
            assert ins.keyword == "ARG", f"line {number}: only ARG may precede the first FROM"
            key, _, default = ins.value.partition("=")
            args[key] = default
        else:
            pending.append(ins)
    stages.append(Stage(name, base, tuple(pending)))
    return Dockerfile(args, tuple(stages))


def map_text(text: str, mapping: Mapping[str, str]) -> str:
    """Replace container paths and host names by their test counterparts, in one pass."""
    if not mapping:
        return text
    pattern = "|".join(re.escape(key) for key in sorted(mapping, key=len, reverse=True))
    return re.sub(pattern, lambda m: mapping[m.group(0)], text)


@dataclass(frozen=True)
class ContainerCommand:
    """What a compose service's container runs: argv, environment and working directory."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either of compose's two notations."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items() if v is not None}


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list)
    return [str(v) for v in value]


def container_command(
    service: Mapping[str, Any], image: ImageConfig, mapping: Mapping[str, str]
) -> ContainerCommand:
    """The service's process as Docker would start it from `image`, mapped onto this machine.

    Compose's `entrypoint` replaces the image's ENTRYPOINT and drops its CMD; `command`
    replaces the CMD; `environment` is laid over the image's ENV.
    """
    if "entrypoint" in service:
        argv = _words(service["entrypoint"]) + _words(service.get("command") or [])
    else:
        argv = image.entrypoint + _words(service.get("command", image.cmd))
    env = {**image.env, **service_env(service)}
    return ContainerCommand(
        argv=[map_text(a, mapping) for a in argv],
        env={k: map_text(v, mapping) for k, v in env.items()},
        cwd=Path(map_text(service.get("working_dir") or image.workdir, mapping)),
    )


def documented_figures(results_file: str) -> list[int]:
    """The megabyte figures of the deployment page's row that cites `results_file`, in order."""
    page = (REPO / "docs" / "deployment.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("|")]
    [row] = [line for line in rows if f"`{results_file}`" in line]
    return [int(n) for n in re.findall(r"(\d+) MB", row)]


def assert_documented(results_file: str, measured_mb: list[float]) -> None:
    """The deployment page's sizes are the ones measured, within 15% (pip and Debian move them a
    little; a new dependency or a stale row does not pass)."""
    stated = documented_figures(results_file)
    assert len(stated) == len(measured_mb), (stated, measured_mb)
    for said, got in zip(stated, measured_mb, strict=True):
        assert abs(said - got) <= 0.15 * got, (
            f"docs/deployment.md says {said} MB where {results_file} measured {got:.0f} MB: "
            "update the row"
        )


async def broker_command_until_ready(
    command: list[str],
    port: int,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    while_ready: Callable[[], None] = lambda: None,
    timeout: float = 300,
) -> tuple[int, bytes]:
    """Run a `pixelwatch broker` command until it reports ready on `port`, call `while_ready`,
    then Ctrl-C it. Returns its exit code and stderr; it never outlives the call."""
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(timeout):
            ready = (await proc.stdout.readline()).decode()
        assert ready.startswith(f"Kafka {KAFKA_VERSION} broker ready on 127.0.0.1:{port} "), ready
        while_ready()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stderr
