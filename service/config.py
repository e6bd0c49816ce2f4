"""The one settings class: every worker option, from `PIXELWATCH_*` environment variables.

Command-line flags override the environment; nothing else reads `os.environ` for settings.
`load_settings` is how commands get them: a bad value or a misspelled variable name is one
line naming it, not a traceback and not a silently ignored variable.
"""

import difflib
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import PixelwatchError
from service.schemas import OutputFormat
from service.scoring.similarity import MetricName
from service.untrusted import clean

PREFIX: Final = "PIXELWATCH_"
HOSTNAME: Final = "@hostname"
"""`PIXELWATCH_GROUP_INSTANCE_ID` value that stands for the host (in Kubernetes: pod) name."""
# Variables in our namespace that are not worker settings.
OTHER_VARIABLES: Final = {
    "PIXELWATCH_CACHE_DIR": "where the local broker's jars are cached",
    "PIXELWATCH_SCREENSHOT": "where `make screenshot` writes the page's picture",
}

# Seconds a transaction may stay open beyond its work: short, because it is also how long a
# killed worker's open transaction (without a successor taking its id) holds up its outputs.
TRANSACTION_MARGIN: Final = 10.0
MAX_TRANSACTION_TIMEOUT: Final = 900.0  # the broker's transaction.max.timeout.ms default

MODEL_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,100}$"
"""A model name is a key on the models topic; `#` and `@` stay free for the keys derived from
it (its shadow, its archived versions)."""

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PIXELWATCH_", env_ignore_empty=True, extra="forbid", frozen=True
    )

    # Kafka connection
    bootstrap: str = Field("localhost:9092", description="comma-separated host:port list")
    group_id: str = Field(
        "pixelwatch", description="consumer group; workers sharing it split partitions"
    )
    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="how to reach the brokers: TLS (SSL), SASL, both or neither"
    )
    sasl_mechanism: SaslMechanism = Field("PLAIN", description="SASL mechanism")
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged)")
    ssl_cafile: Path | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates"
    )
    ssl_certfile: Path | None = Field(None, description="PEM client certificate, for mutual TLS")
    ssl_keyfile: Path | None = Field(None, description="PEM key of the client certificate")

    # Topics
    input_topic: str = Field("pixelwatch.images", description="images to score")
    anomalies_topic: str = Field("pixelwatch.anomalies", description="the images flagged")
    scores_topic: str = Field("pixelwatch.scores", description="every scored image")
    scores_enabled: bool = Field(True, description="publish every scored image, not only anomalies")
    dlq_topic: str = Field("pixelwatch.dlq", description="messages that cannot be scored")
    partitions: int = Field(4, ge=1, description="partitions for topics this worker creates")
    replication_factor: int = Field(1, ge=1, description="replicas of topics this worker creates")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a consumer group without committed offsets starts"
    )
    connect_timeout: float = Field(
        120.0, gt=0.0, description="seconds to keep retrying an unreachable broker at start-up"
    )

    # Scoring
    model: Path = Field(Path("model.onnx"), description="scoring graph from `pixelwatch train`")
    metric: MetricName | None = Field(None, description="override the model's default metric")
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="override the model's threshold"
    )
    batch_size: int = Field(500, ge=1, le=100_000, description="most messages scored per ONNX call")
    batch_window: float = Field(
        0.05, gt=0.0, le=60.0, description="seconds to wait to fill a batch"
    )
    max_message_bytes: int | None = Field(
        None,
        ge=64,
        le=100_000_000,
        description=(
            "larger payloads go to the DLQ (default: room for 16 images of the model's size "
            "at 32 bytes a pixel, at least 65536)"
        ),
    )
    onnx_threads: int = Field(1, ge=1, description="onnxruntime threads per worker process")
    model_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="refuse to start unless the model file has this sha256",
    )

    # Model lifecycle: models published on a topic, shadow scoring, drift
    model_name: str = Field(
        "default",
        pattern=MODEL_NAME_PATTERN,
        description="the model this worker follows on the models topic",
    )
    models_topic: str = Field(
        "pixelwatch.models", description="compacted topic of published models (all workers read it)"
    )
    shadow_topic: str = Field("pixelwatch.shadow", description="a shadow model's verdicts")
    model_poll_interval: float = Field(
        5.0, gt=0.0, le=3600.0, description="seconds between checks of the model file for changes"
    )
    drift_window: float = Field(
        3600.0, ge=60.0, le=7 * 86_400.0, description="seconds of live similarities drift covers"
    )
    drift_interval: float = Field(
        10.0, gt=0.0, le=600.0, description="seconds between a worker's updates of the window"
    )
    drift_min_images: int = Field(
        500, ge=1, description="images the window needs before drift is reported"
    )
    suggest_threshold: bool = Field(
        False, description="export a suggested threshold (never applied by the worker)"
    )

    # Outputs and delivery
    scores_format: OutputFormat = Field(
        "compact", description="scores topic record: compact (no pixels) or full"
    )
    anomalies_format: OutputFormat = Field(
        "full", description="anomalies topic record: full (pixels, reconstruction) or compact"
    )
    scores_grouping: Literal["image", "message"] = Field(
        "image",
        description=(
            "scores topic records: one per image, or one per multi-image message holding "
            "every image's verdict (compact scores only)"
        ),
    )
    delivery_timeout: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        description="seconds an output is retried before it counts as undeliverable",
    )
    max_in_flight: int = Field(
        20_000,
        ge=1,
        le=10_000_000,
        description="consumed messages whose outputs are not yet confirmed, at most",
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: a crash re-answers the inputs since the last commit; "
        "exactly_once: outputs, dead letters and offsets commit in one Kafka transaction",
    )
    session_timeout: float = Field(
        10.0,
        ge=1.0,
        le=300.0,
        description="seconds without a heartbeat before a worker's partitions move on",
    )
    group_instance_id: str | None = Field(
        None,
        pattern=r"^(@hostname|[A-Za-z0-9._-]{1,249})$",
        description="static group membership: a stable id per worker; @hostname uses the host "
        "(pod) name. A worker restarted within the session timeout keeps its partitions",
    )

    # Process
    metrics_port: int = Field(
        6066, ge=0, le=65535, description="HTTP port for /metrics, the probes and the page (0: off)"
    )
    # All interfaces, as containers need; for a worker run by hand, 127.0.0.1 keeps the page
    # (which shows pixel data) and the metrics on this machine.
    metrics_host: str = Field("0.0.0.0", description="address the HTTP port binds to")
    lag_interval: float = Field(
        5.0, gt=0.0, le=3600.0, description="seconds between consumer-lag metric refreshes"
    )
    data_dir: Path = Field(Path(".pixelwatch"), description="faust's local state directory")
    commit_interval: float = Field(1.0, gt=0.0, description="seconds between offset commits")
    stall_timeout: float = Field(
        30.0,
        gt=0.0,
        le=3600.0,
        description="/ready fails after this many seconds without progress while messages wait",
    )

    # The anomaly page, served at / on the metrics port
    web_enabled: bool = Field(
        True, description="serve the anomaly page (it shows pixel data); /metrics and probes stay"
    )
    web_anomalies: int = Field(
        50, ge=1, le=1000, description="anomalies the page keeps and shows, newest first"
    )
    web_rate_window: float = Field(
        60.0, gt=0.0, le=86_400.0, description="seconds over which the page's rates are counted"
    )

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="for our log lines and those of faust, aiokafka and librdkafka"
    )

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs "
                "PIXELWATCH_SASL_USERNAME and PIXELWATCH_SASL_PASSWORD"
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path} does not exist")
        if self.scores_grouping == "message" and self.scores_format != "compact":
            raise ValueError(
                "scores_grouping message needs PIXELWATCH_SCORES_FORMAT=compact: a grouped "
                "record holds verdicts, not pixels"
            )
        topics = [
            self.input_topic,
            self.anomalies_topic,
            self.scores_topic,
            self.dlq_topic,
            self.shadow_topic,
            self.models_topic,
        ]
        if self.processing_guarantee == "exactly_once":
            needed = self.transaction_timeout
            if needed > MAX_TRANSACTION_TIMEOUT:
                raise ValueError(
                    f"exactly_once needs PIXELWATCH_COMMIT_INTERVAL + PIXELWATCH_DELIVERY_TIMEOUT "
                    f"+ {TRANSACTION_MARGIN:.0f} s ({needed:.0f} s) within the broker's default "
                    f"transaction.max.timeout.ms ({MAX_TRANSACTION_TIMEOUT:.0f} s)"
                )
        if len(set(topics)) < len(topics):
            raise ValueError(
                "input, anomalies, scores, DLQ, shadow and models topics must all be different"
            )
        return self

    @property
    def instance_id(self) -> str | None:
        """The consumer's `group.instance.id`, with @hostname resolved."""
        if self.group_instance_id == HOSTNAME:
            return socket.gethostname()
        return self.group_instance_id

    @property
    def transactional_id(self) -> str | None:
        """The data plane's `transactional.id` in exactly_once: stable per worker instance, so
        a restarted worker fences its predecessor and aborts its open transaction at once.
        None without `group_instance_id` (the data plane then makes a unique one per run)."""
        instance = self.instance_id
        return f"pixelwatch-{self.group_id}-{instance}" if instance else None

    @property
    def transaction_timeout(self) -> float:
        """Seconds a transaction may stay open: a commit interval of batches, then up to the
        delivery timeout to confirm them, and a margin for the commit itself."""
        return self.commit_interval + self.delivery_timeout + TRANSACTION_MARGIN

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]

    def redacted(self) -> dict[str, object]:
        """Settings for a start-up log line: secrets stay hidden (SecretStr prints as ***)."""
        return {k: str(v) for k, v in self if v is not None}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per `PIXELWATCH_*` variable that is no setting, with the closest valid name."""
    valid = {PREFIX + name.upper() for name in Settings.model_fields} | OTHER_VARIABLES.keys()
    # Compared without the shared prefix, which would make every name look alike.
    names = {v.removeprefix(PREFIX): v for v in valid}
    lines = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in valid:
            continue
        close = difflib.get_close_matches(name.removeprefix(PREFIX), sorted(names), n=1, cutoff=0.7)
        hint = f"did you mean {names[close[0]]}?" if close else "see docs/reference/settings.md"
        lines.append(f"{name} is not a pixelwatch setting; {hint}")
    return lines


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and `overrides` (flags), or one line saying what is wrong."""
    problems = unknown_variables(os.environ)
    if problems:
        raise PixelwatchError(problems[0])
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        if not field:  # a rule across settings: its message names them
            rule = first["msg"].removeprefix("Value error, ")
            raise PixelwatchError(f"invalid settings: {rule}") from None
        shown = "" if "password" in field else f"={clean(repr(first.get('input')), 60)}"
        message = f"invalid setting {PREFIX}{field.upper()}{shown}: {first['msg']}"
        raise PixelwatchError(message) from None
