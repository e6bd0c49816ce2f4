"""A real single-node Apache Kafka broker (KRaft, broker + controller) for development and tests.

No Docker and no tarball: the broker's jars are resolved once from Maven Central through
the pom.xml shipped beside this module (package data) into a cache dir, so the only
prerequisites are Java 17+ and Maven.
"""

import asyncio
import atexit
import base64
import contextlib
import fcntl
import hashlib
import importlib.resources
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from aiokafka.admin import AIOKafkaAdminClient

from service.config import Settings
from service.errors import PixelwatchError

KAFKA_VERSION = "4.1.1"
# Package data, so an installed wheel finds it as well as a checkout does.
POM_RESOURCE: Final = "pom.xml"
PREREQUISITES = (
    "Java 17+ and Maven are prerequisites of the local Kafka broker; "
    "on Debian: apt-get install openjdk-17-jre-headless maven"
)
# The console is Kafka's stdout, which start() sends to broker.log, never to the terminal.
# WARN keeps it readable; the one INFO line marks the end of start-up (see _wait_ready).
LOG4J2_PROPERTIES = """\
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""
STARTED_LINE = "Kafka Server started"
# Topics are created by the worker (or by you), never by a client that merely names one: a
# deleted output topic must stay deleted, not come back with some other partition count.
DEFAULT_PARTITIONS: Final = int(Settings.model_fields["partitions"].default)
SCRAM_MECHANISM: Final = "SCRAM-SHA-512"

log = logging.getLogger(__name__)


class BrokerError(PixelwatchError):
    """The local Kafka broker could not be set up, started or stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_cache_dir() -> Path:
    return Path(os.environ.get("PIXELWATCH_CACHE_DIR") or Path.home() / ".cache" / "pixelwatch")


class LocalBroker:
    """One Kafka process listening on 127.0.0.1:`port`; use as a context manager.

    `listeners` adds listeners beside the PLAINTEXT one, e.g. `{"SASL_PLAINTEXT": 9093}`
    (the name is also the security protocol); `scram_users` ({user: password}) are created
    as SCRAM-SHA-512 credentials when the storage is formatted; `properties` are added to, or
    override, the generated server.properties.
    """

    def __init__(
        self,
        port: int = 9092,
        data_dir: Path | None = None,
        cache_dir: Path | None = None,
        controller_port: int | None = None,
        *,
        listeners: Mapping[str, int] | None = None,
        scram_users: Mapping[str, str] | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port
        self.controller_port = controller_port
        self.listeners = dict(listeners or {})
        self.scram_users = dict(scram_users or {})
        self.properties = dict(properties or {})
        self._data_dir = data_dir
        self._cache_dir = cache_dir
        self._owns_data_dir = data_dir is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise BrokerError("the broker has no data dir until it is started")
        return self._data_dir

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would: no clean shutdown. The data dir, ports and
        lock stay this object's, so `start()` brings the same broker back."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def start(self, timeout: float = 120.0) -> None:
        if self._proc is not None:
            return
        java = shutil.which("java")
        if java is None:
            raise BrokerError(f"`java` is not on PATH. {PREREQUISITES}")
        _check_port_free(self.port)
        libs = resolve_jars(self._cache_dir or default_cache_dir())
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="pixelwatch-kafka-"))
        try:
            self._launch(java, libs, timeout)
        except BaseException:
            self.stop()
            raise

    def _launch(self, java: str, libs: Path, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._lock is None:  # still held after kill(): the same broker comes back
            self._lock_data_dir()
        # Kept, so a restart on this data dir finds its controller where the log says it is.
        self.controller_port = self.controller_port or free_port()
        _check_port_free(self.controller_port)
        for port in self.listeners.values():
            _check_port_free(port)
        config = self._write_config(self.controller_port)
        options = [f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}"]
        options += ["-cp", str(libs / "*")]
        if not (self.data_dir / "kafka-logs" / "meta.properties").exists():
            # A short-lived tool: the quick C1 compiler alone saves start-up CPU.
            scram = [
                f"{SCRAM_MECHANISM}=[name={user},password={password}]"
                for user, password in self.scram_users.items()
            ]
            _format_storage([java, "-XX:TieredStopAtLevel=1", *options], config, scram)
        log.debug("starting Kafka %s on %s", KAFKA_VERSION, self.bootstrap)
        with self.log_file.open("wb") as out, _signals_held() as unmask:
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop Kafka in order.
            self._proc = subprocess.Popen(
                [java, "-Xmx512m", *options, "kafka.Kafka", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                pass_fds=[self._lock.fileno()] if self._lock else [],
                preexec_fn=unmask,
            )
        # A safety net for callers that forget stop(): never leave an orphan JVM behind.
        atexit.register(self.stop)
        self._wait_ready(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                proc.wait()  # it exited between poll() and killpg()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def _lock_data_dir(self) -> None:
        """Refuse a data dir that another broker uses: two Kafkas on one dir corrupt it.

        Kafka's own lock did not prevent that in practice (the running one died with a
        CorruptRecordException). The JVM inherits the lock, so it holds even if we die first.
        """
        lock = (self.data_dir / ".pixelwatch.lock").open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise BrokerError(
                f"data dir {self.data_dir} is in use by another Kafka broker; "
                "stop it or choose another --data-dir"
            ) from None
        self._lock = lock

    def _write_config(self, controller_port: int) -> Path:
        ports = {"PLAINTEXT": self.port, **self.listeners}
        served = ",".join(f"{name}://127.0.0.1:{port}" for name, port in ports.items())
        protocols = {name: name for name in ports} | {"CONTROLLER": "PLAINTEXT"}
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
            "listeners": f"{served},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": served,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(f"{k}:{v}" for k, v in protocols.items()),
            "log.dirs": str(self.data_dir / "kafka-logs"),
            "num.partitions": str(DEFAULT_PARTITIONS),
            "auto.create.topics.enable": "false",
            # A single node cannot hold the default 3 replicas of the internal topics.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Consumers in tests and demos should get their partitions at once.
            "group.initial.rebalance.delay.ms": "0",
        }
        if any(name.startswith("SASL") for name in self.listeners):
            settings["sasl.enabled.mechanisms"] = SCRAM_MECHANISM
            for name in self.listeners:
                prefix = f"listener.name.{name.lower()}.{SCRAM_MECHANISM.lower()}"
                settings[f"{prefix}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
        settings |= self.properties
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        return config

    def _wait_ready(self, timeout: float) -> None:
        """Return once the broker answers a real Kafka request and lists itself as a broker."""
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"Kafka exited with code {code} while starting; "
                    f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"Kafka did not become ready on {self.bootstrap} within {timeout:.0f}s; "
                    f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            # The log line gates the probe so aiokafka does not log connection errors while
            # the JVM is still booting; the probe then proves requests are really served.
            if STARTED_LINE in self.log_file.read_text(errors="replace") and _serves_requests(
                self.bootstrap
            ):
                return
            time.sleep(0.2)


@contextlib.contextmanager
def _signals_held() -> Iterator[Callable[[], None] | None]:
    """Hold SIGINT and SIGTERM back while the JVM is spawned, so a handler that raises (as
    `pixelwatch broker`'s does during start-up) runs only once the child is in `_proc` and
    `stop()` can reach it: raised inside `Popen`, it would orphan a JVM nobody knows of.

    Yields the `preexec_fn` that gives the child the caller's own signal mask back (a mask
    survives exec, and a JVM that never sees SIGTERM could not be stopped in order), or None
    off the main thread, where Python never runs a handler and there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

    def unmask() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    try:
        yield unmask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        # SO_REUSEADDR so that connections of a just-stopped broker (TIME_WAIT) do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise BrokerError(
                f"port {port} on 127.0.0.1 is already in use (another Kafka running?); "
                "stop it or choose another port with --port"
            ) from None


def pom_bytes() -> bytes:
    """The pom that lists the broker's jars, read from this package's data."""
    resource = importlib.resources.files(__package__).joinpath(POM_RESOURCE)
    try:
        return resource.read_bytes()
    except OSError as exc:
        raise BrokerError(
            f"the package data {__package__}/{POM_RESOURCE} cannot be read ({exc}), "
            "so the Kafka jars cannot be resolved; reinstall pixelwatch"
        ) from None


def resolve_jars(cache_dir: Path) -> Path:
    """The directory holding Kafka's runtime jars, downloaded with Maven on first use."""
    libs = cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
    marker = libs / ".complete"
    pom = pom_bytes()
    # The marker holds the pom's digest, so editing the pom (e.g. a version bump) re-resolves.
    digest = hashlib.sha256(pom).hexdigest()

    def complete() -> bool:
        return marker.is_file() and marker.read_text().strip() == digest

    if complete():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(f"`mvn` is not on PATH. {PREREQUISITES}")
    print(
        f"resolving Kafka {KAFKA_VERSION} jars from Maven Central into {libs} (first run only)…",
        file=sys.stderr,
        flush=True,
    )
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Resolve into a fresh dir and move it into place whole: an interrupted or concurrent
    # run never leaves a half-filled libs dir that looks complete.
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    # Maven runs on a copy of the pom in the cache: the installed package may be read-only,
    # and Maven may write a target/ dir beside the pom it is given.
    project = Path(tempfile.mkdtemp(prefix="pom-", dir=libs.parent))
    try:
        (project / "pom.xml").write_bytes(pom)
        command = [mvn, "-q", "-B", "-f", str(project / "pom.xml"), "dependency:copy-dependencies"]
        command += [f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=project)
        if done.returncode != 0:
            output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise BrokerError(f"Maven could not resolve the Kafka jars:\n{output}")
        (staging / ".complete").write_text(digest + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        if not complete():  # else a concurrent run finished first and its jars may be in use
            shutil.rmtree(libs, ignore_errors=True)  # a stale set from an older pom
            staging.rename(libs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)
    return libs


def _format_storage(jvm: list[str], config: Path, scram: list[str]) -> None:
    """Format the log dir as a single-node dynamic (standalone) KRaft quorum."""
    command = [*jvm, "kafka.tools.StorageTool", "format", "--standalone"]
    command += ["--config", str(config), "--cluster-id", new_cluster_id()]
    for credential in scram:
        command += ["--add-scram", credential]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerError(
            f"formatting Kafka storage failed:\n{(done.stdout + done.stderr).strip()}"
        )


def new_cluster_id() -> str:
    """A Kafka Uuid: 16 random bytes, url-safe base64 without padding."""
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not text.startswith("-"):  # would be read as an option on the command line
            return text


def _serves_requests(bootstrap: str) -> bool:
    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            return bool(cluster["brokers"])
        except Exception as exc:  # not ready yet: the caller polls again
            log.debug("Kafka not ready yet: %r", exc)
            return False
        finally:
            await admin.close()

    # A thread of its own, because start() may be called where an event loop already runs.
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(probe())), daemon=True)
    thread.start()
    thread.join()
    return bool(result and result[0])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "  (no log)"
    return "\n".join(f"  {line}" for line in text.splitlines()[-lines:]) or "  (empty log)"
