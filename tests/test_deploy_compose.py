"""docker-compose.yml: valid against the Compose specification, and wired as the issue asks.

`docker compose` is not available here; the file is validated with check-jsonschema's copy of
the Compose schema (as written, and with every default substituted), and its wiring is read
with the same interpolation rules compose applies. tests/test_container_commands.py runs the
services' commands.
"""

import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Final

import pytest
import yaml

from service.config import Settings
from service.kafka.broker import KAFKA_VERSION
from worker_harness import (
    COMPOSE_FILE,
    REPO,
    interpolate,
    load_compose,
    parse_dockerfile,
    service_env,
)

CHECK_JSONSCHEMA: Final = Path(sys.executable).parent / "check-jsonschema"
PODMAN_COMPOSE: Final = Path(sys.executable).parent / "podman-compose"
SERVICES: Final = {"kafka", "trainer", "worker", "producer", "prometheus", "grafana"}
# Written by the observability work (issue 4); compose mounts them into the containers.
OBSERVABILITY_FILES: Final = {
    "deploy/prometheus/prometheus.yml": "/etc/prometheus/prometheus.yml",
    "deploy/prometheus/alerts.yml": "/etc/prometheus/alerts.yml",
    "deploy/grafana/provisioning/datasources/prometheus.yml": (
        "/etc/grafana/provisioning/datasources/prometheus.yml"
    ),
    "deploy/grafana/provisioning/dashboards/pixelwatch.yml": (
        "/etc/grafana/provisioning/dashboards/pixelwatch.yml"
    ),
    "deploy/grafana/dashboards/pixelwatch.json": "/var/lib/grafana/dashboards/pixelwatch.json",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file with every variable at its default, as a plain `docker compose up` sees it."""
    return load_compose({})


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    command = [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    result = check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_with_its_defaults_substituted_is_valid_too(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    substituted = tmp_path / "compose.yml"
    substituted.write_text(yaml.safe_dump(compose))
    result = check_jsonschema(substituted)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validation_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  worker:\n    depends_on:\n      kafka: {condition: up}\n")
    assert check_jsonschema(broken).returncode != 0


def podman_compose_config(**variables: str) -> dict[str, Any]:
    """The file as podman-compose reads it: its own parser and interpolation, a second opinion
    beside the schema. It runs no container, so the images need not exist."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHON_IMAGE"}}
    # --profile demo: the producer too.
    command = [str(PODMAN_COMPOSE), "-f", str(COMPOSE_FILE), "--profile", "demo", "config"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**env, **variables},
        cwd=COMPOSE_FILE.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = yaml.safe_load(done.stdout)
    assert isinstance(result, dict)
    return result


def build_args(service: dict[str, Any]) -> dict[str, str]:
    args = service["build"].get("args", {})
    if isinstance(args, list):  # podman-compose prints the list form, KEY=VALUE
        args = dict(item.split("=", 1) for item in args)
    assert isinstance(args, dict)
    return args


def test_podman_compose_reads_every_service_of_the_file() -> None:
    assert set(podman_compose_config()["services"]) == SERVICES


def test_podman_compose_rejects_a_file_with_a_required_variable_unset(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text('services:\n  worker:\n    image: "${PW_UNSET_VARIABLE:?must be set}"\n')
    command = [str(PODMAN_COMPOSE), "-f", str(broken), "config"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "PW_UNSET_VARIABLE" in done.stderr, done.stderr


def test_built_images_default_to_the_dockerfiles_base_and_take_python_image() -> None:
    default = parse_dockerfile().args["PYTHON_IMAGE"]
    for variables, expected in (
        ({}, default),
        ({"PYTHON_IMAGE": "localhost/base:1"}, "localhost/base:1"),
    ):
        services = podman_compose_config(**variables)["services"]
        built = {name for name, service in services.items() if "build" in service}
        assert built == {"trainer", "worker", "producer"}, built
        for name in built:
            assert build_args(services[name])["PYTHON_IMAGE"] == expected, (name, variables)


def test_services_are_the_ones_the_issue_lists(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


def test_kafka_is_the_official_image_of_the_local_brokers_version_in_kraft_mode(
    services: dict[str, Any],
) -> None:
    kafka = services["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = service_env(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "zookeeper" not in str(kafka).lower()
    test = kafka["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and test[1].startswith("/opt/kafka/bin/")
    assert "--bootstrap-server localhost:9092" in test[1]


def test_kafka_creates_no_topic_on_the_fly(
    services: dict[str, Any],
) -> None:
    # A deleted output topic must stay deleted; the worker creates its own topics.
    assert service_env(services["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_host_listener_is_the_published_port(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    env = service_env(kafka)
    [port] = kafka["ports"]
    host_ip, host_port, container_port = port.split(":")
    assert host_ip == "127.0.0.1"
    assert f"HOST://:{container_port}" in env["KAFKA_LISTENERS"].split(",")
    assert f"HOST://localhost:{host_port}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    # The containers' listener is the one the worker and producer are given.
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    for name in ("worker", "producer"):
        assert service_env(services[name])["PIXELWATCH_BOOTSTRAP"] == "kafka:9092"


def test_every_image_is_built_here_or_pinned_to_a_version(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["dockerfile"] == "deploy/Dockerfile"
            assert service["build"]["context"] == "."
            continue
        tag = service["image"].partition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {service['image']} is not pinned"
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_built_services_use_the_dockerfile_targets_that_exist(services: dict[str, Any]) -> None:
    stages = {s.name for s in parse_dockerfile().stages}
    targets = {n: s["build"]["target"] for n, s in services.items() if "build" in s}
    assert targets == {"trainer": "trainer", "worker": "worker", "producer": "worker"}
    assert set(targets.values()) <= stages
    assert services["producer"]["image"] == services["worker"]["image"]  # built once


def test_worker_waits_for_a_healthy_kafka_and_a_trainer_that_succeeded(
    services: dict[str, Any],
) -> None:
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "trainer": {"condition": "service_completed_successfully"},
    }


def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    for fixed in ("container_name", "hostname", "ports"):
        assert fixed not in worker, f"`{fixed}` would stop `--scale worker=N`"
    assert worker["expose"] == [service_env(worker)["PIXELWATCH_METRICS_PORT"]]


def test_model_volume_is_written_by_the_trainer_and_read_only_for_workers(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert "models" in compose["volumes"]
    assert services["trainer"]["volumes"] == ["models:/models"]
    assert services["worker"]["volumes"] == ["models:/models:ro"]
    model = service_env(services["worker"])["PIXELWATCH_MODEL"]
    assert PurePosixPath(model).parent == PurePosixPath("/models")
    script = services["trainer"]["command"][0]
    assert f"if [ -f {model} ]; then" in script  # skipped when the model exists
    assert f"--out {model}" in script
    assert "--data /opt/pixelwatch/samples/seed_train.txt" in script
    assert services["trainer"]["restart"] == "no"


def test_trainer_defaults_match_the_model_image_build(services: dict[str, Any]) -> None:
    """The compose model and the Kubernetes model image are trained alike by default."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["trainer"]["command"][0]
    defaults = dict(re.findall(r"\$\{(TRAIN_[A-Z]+):-([^}]*)\}", raw))
    [*_, seed_model] = [s for s in parse_dockerfile().stages if s.name == "seed-model"]
    args = dict(a.value.split("=", 1) for a in seed_model.find("ARG"))
    assert defaults == args == {"TRAIN_EPOCHS": "800", "TRAIN_SEED": "0", "TRAIN_THRESHOLD": "0.6"}


def test_producer_runs_only_in_the_demo_profile_once_a_worker_is_healthy(
    services: dict[str, Any],
) -> None:
    producer = services["producer"]
    assert producer["profiles"] == ["demo"]
    assert [n for n, s in services.items() if "profiles" in s] == ["producer"]
    assert producer["depends_on"]["worker"] == {"condition": "service_healthy"}
    assert producer["command"][:2] == ["produce", "/opt/pixelwatch/samples/seed_test.txt"]
    assert producer["healthcheck"] == {"disable": True}
    assert producer["restart"] == "no"


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def test_ports_and_credentials_come_from_variables_with_defaults() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for value in strings(raw):
        for name in re.findall(r"(?<!\$)\$\{([^}]*)\}", value):
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*:-[^}]*", name), f"${{{name}}} has no default"
    for name, service in raw["services"].items():
        for port in service.get("ports", []):
            assert re.fullmatch(
                r"\$\{BIND_ADDRESS:-127\.0\.0\.1\}:\$\{[A-Z_]+_PORT:-\d+\}:\d+", port
            ), f"{name}: {port}"
    grafana = service_env(raw["services"]["grafana"])
    assert grafana["GF_SECURITY_ADMIN_USER"] == "${GRAFANA_ADMIN_USER:-admin}"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-admin}"
    assert grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"


def test_variables_override_ports_and_credentials() -> None:
    overridden = load_compose(
        {"GRAFANA_PORT": "3300", "BIND_ADDRESS": "0.0.0.0", "GRAFANA_ADMIN_PASSWORD": "s3cret"}
    )["services"]["grafana"]
    assert overridden["ports"] == ["0.0.0.0:3300:3000"]
    assert service_env(overridden)["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    assert interpolate("$${x} ${A-b} ${A:-c}", {"A": ""}) == "${x}  c"


def test_worker_environment_defaults_are_valid_worker_settings(services: dict[str, Any]) -> None:
    env = service_env(services["worker"])
    assert all(key.startswith("PIXELWATCH_") for key in env)
    # model_validate: unknown keys fail (extra="forbid"); empty values are left out, as the
    # worker ignores empty variables.
    settings = Settings.model_validate(
        {k.removeprefix("PIXELWATCH_").lower(): v for k, v in env.items() if v}
    )
    assert settings.partitions == 4 and settings.metrics_port == 6066
    assert settings.model_sha256 is None  # no pin until one is set
    pinned = service_env(load_compose({"PIXELWATCH_MODEL_SHA256": "ab" * 32})["services"]["worker"])
    assert pinned["PIXELWATCH_MODEL_SHA256"] == "ab" * 32


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name in ("kafka", "worker", "prometheus", "grafana"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries"} <= set(check), name
        assert services[name]["restart"] == "unless-stopped", name


def test_worker_healthcheck_is_the_images_own(services: dict[str, Any]) -> None:
    image = parse_dockerfile().image("worker", {})
    assert services["worker"]["healthcheck"]["test"] == ["CMD", *(image.healthcheck or [])]


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Repository path -> container path of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[source.removeprefix("./")] = target
    return mounts


def container_path(service: dict[str, Any], repo_path: str) -> str | None:
    for source, target in bind_mounts(service).items():
        if repo_path == source or repo_path.startswith(source + "/"):
            return target + repo_path[len(source) :]
    return None


def test_bind_mounts_exist_in_the_repository(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for source in bind_mounts(service):
            # A missing source would make Docker create an empty directory in its place.
            assert (REPO / source).exists(), f"{name} mounts ./{source}, which does not exist"


def test_prometheus_and_grafana_mount_the_repositorys_configuration(
    services: dict[str, Any],
) -> None:
    for repo_path, expected in OBSERVABILITY_FILES.items():
        service = services["prometheus" if "prometheus/" in repo_path else "grafana"]
        assert container_path(service, repo_path) == expected, repo_path
        assert all(v.endswith(":ro") for v in service["volumes"] if v.startswith("./"))
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def read_yaml(repo_path: str) -> Any:
    path = REPO / repo_path
    assert path.is_file(), f"{repo_path} is missing (the observability work creates it)"
    return yaml.safe_load(path.read_text())


def test_prometheus_loads_the_mounted_rules_and_scrapes_every_worker_replica(
    services: dict[str, Any],
) -> None:
    config = read_yaml("deploy/prometheus/prometheus.yml")
    mounted = PurePosixPath("/etc/prometheus")
    for rules in config["rule_files"]:
        target = mounted / rules  # relative to the config file
        assert target == PurePosixPath(OBSERVABILITY_FILES["deploy/prometheus/alerts.yml"])
    # With `--scale worker=N` the name `worker` has N addresses: DNS discovery scrapes each.
    port = int(service_env(services["worker"])["PIXELWATCH_METRICS_PORT"])
    workers = [
        sd
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        if "worker" in sd["names"]
    ]
    assert workers == [{**workers[0], "names": ["worker"], "type": "A", "port": port}]


def test_grafana_reads_prometheus_and_the_mounted_dashboard(services: dict[str, Any]) -> None:
    datasources = read_yaml("deploy/grafana/provisioning/datasources/prometheus.yml")
    [source] = datasources["datasources"]
    published = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["url"] == f"http://prometheus:{published}"
    providers = read_yaml("deploy/grafana/provisioning/dashboards/pixelwatch.yml")
    [provider] = providers["providers"]
    dashboard = OBSERVABILITY_FILES["deploy/grafana/dashboards/pixelwatch.json"]
    assert PurePosixPath(provider["options"]["path"]) == PurePosixPath(dashboard).parent
