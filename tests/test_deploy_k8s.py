"""deploy/k8s: the files kustomization.yaml lists, validated and cross-checked.

The core resources are validated against the Kubernetes 1.37 OpenAPI schemas (strict: unknown
fields fail) with kubernetes-validate. The KEDA ScaledObject and the Prometheus Operator
ServiceMonitor have no schema there, so they are checked structurally: the fields their CRDs
require, and that they point at the resources they scale and scrape. kubectl/kustomize is not
needed: the kustomization only adds a namespace, a label and image tags, checked here too.
"""

import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Final

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml

from service.config import Settings
from worker_harness import REPO, parse_dockerfile

K8S: Final = REPO / "deploy" / "k8s"
KUBERNETES_VERSION: Final = "1.37.0"
CORE_KINDS: Final = {
    "Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
}  # fmt: skip
Resource = dict[str, Any]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def resources(kustomization: dict[str, Any]) -> dict[str, Resource]:
    """Every resource of the kustomization, by kind (each kind appears once)."""
    found: dict[str, Resource] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert doc["kind"] not in found, f"a second {doc['kind']} in {name}"
            found[doc["kind"]] = doc
    return found


def worker_container(resources: dict[str, Resource]) -> dict[str, Any]:
    [container] = resources["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def settings_data(resources: dict[str, Resource]) -> dict[str, str]:
    data = resources["ConfigMap"]["data"]
    assert isinstance(data, dict)
    return data


def test_kustomization_lists_every_manifest_of_the_directory(kustomization: dict[str, Any]) -> None:
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    assert kustomization["namespace"] == "pixelwatch"


def test_core_resources_are_valid_kubernetes_objects(resources: dict[str, Resource]) -> None:
    assert set(resources) == CORE_KINDS | {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
    for kind in sorted(CORE_KINDS):
        kubernetes_validate.validate(resources[kind], KUBERNETES_VERSION, strict=True)


def test_the_schema_validation_rejects_an_invalid_deployment(
    resources: dict[str, Resource],
) -> None:
    broken = yaml.safe_load(yaml.safe_dump(resources["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "6066"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_settings_are_valid_worker_settings(resources: dict[str, Resource]) -> None:
    secret = resources["Secret"]["stringData"]
    for data in (settings_data(resources), secret):
        assert all(key.startswith("PIXELWATCH_") for key in data)
    values = {**settings_data(resources), **{k: v for k, v in secret.items() if v}}
    # model_validate: unknown keys fail (extra="forbid"), where the environment ignores them.
    settings = Settings.model_validate(
        {k.removeprefix("PIXELWATCH_").lower(): v for k, v in values.items()}
    )
    assert settings.security_protocol == "PLAINTEXT"  # so the empty credentials are fine
    assert set(secret) == {"PIXELWATCH_SASL_USERNAME", "PIXELWATCH_SASL_PASSWORD"}
    env_from = worker_container(resources)["envFrom"]
    assert env_from == [
        {"configMapRef": {"name": resources["ConfigMap"]["metadata"]["name"]}},
        {"secretRef": {"name": resources["Secret"]["metadata"]["name"], "optional": True}},
    ]


def test_probes_ask_healthz_for_liveness_and_ready_for_readiness_on_the_metrics_port(
    resources: dict[str, Resource],
) -> None:
    container = worker_container(resources)
    [port] = container["ports"]
    assert port["name"] == "metrics"
    assert port["containerPort"] == int(settings_data(resources)["PIXELWATCH_METRICS_PORT"])
    probes = ("startupProbe", "livenessProbe", "readinessProbe")
    paths = {probe: container[probe]["httpGet"] for probe in probes}
    assert paths == {
        "startupProbe": {"path": "/healthz", "port": "metrics"},
        "livenessProbe": {"path": "/healthz", "port": "metrics"},
        "readinessProbe": {"path": "/ready", "port": "metrics"},
    }
    # Start-up may wait connect_timeout for Kafka; the startup probe must outlast it.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > Settings().connect_timeout
    [service_port] = resources["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "metrics" and service_port["name"] == "metrics"


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_selectors_pick_the_worker_pods(resources: dict[str, Resource]) -> None:
    deployment = resources["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert labels_match(resources["Service"]["spec"]["selector"], pod_labels)
    budget = resources["PodDisruptionBudget"]["spec"]
    assert labels_match(budget["selector"]["matchLabels"], pod_labels)
    assert resources["Service"]["spec"]["clusterIP"] == "None"  # one endpoint per worker
    # Unready workers stay endpoints: a stalled worker's metrics are the ones alerts need.
    assert resources["Service"]["spec"]["publishNotReadyAddresses"] is True


def test_deployment_leaves_the_replica_count_to_the_autoscaler(
    resources: dict[str, Resource],
) -> None:
    assert "replicas" not in resources["Deployment"]["spec"]
    # maxUnavailable, not minAvailable: with a single replica, node drains still proceed.
    budget = resources["PodDisruptionBudget"]["spec"]
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # unready ones do not block


def test_a_rollout_replaces_the_old_worker_before_starting_the_new_one(
    resources: dict[str, Resource],
) -> None:
    # At the autoscaler's maximum (replicas = partitions) a surge worker would get no
    # partition, so never pass /ready, and the rollout would wait on it for good.
    strategy = resources["Deployment"]["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def quantity(text: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|)", str(text))
    assert match, text
    return float(match.group(1)) * units[match.group(2)]


def test_every_container_has_requests_within_limits(resources: dict[str, Resource]) -> None:
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    for container in pod["initContainers"] + pod["containers"]:
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        for resource in ("cpu", "memory"):
            assert quantity(requests[resource]) <= quantity(limits[resource]), container["name"]


def test_pods_meet_the_restricted_pod_security_standard(resources: dict[str, Resource]) -> None:
    assert resources["Namespace"]["metadata"]["labels"] == {
        "pod-security.kubernetes.io/enforce": "restricted"
    }
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    user = parse_dockerfile().image("worker", {}).user.split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user  # the images' user owns the model
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]


def test_model_reaches_the_worker_through_the_init_container(
    resources: dict[str, Resource], kustomization: dict[str, Any]
) -> None:
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    source, destination = init["command"][1:]
    assert init["command"][0] == "cp"
    # The model image holds the file the init container copies (deploy/Dockerfile, `model`).
    [copy] = parse_dockerfile().stage("model").find("COPY")
    assert copy.body.split()[-1] == source
    [init_mount] = init["volumeMounts"]
    assert PurePosixPath(destination).parent == PurePosixPath(init_mount["mountPath"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[init_mount["name"]]
    # The worker sees that volume, read-only, where PIXELWATCH_MODEL points.
    model = PurePosixPath(settings_data(resources)["PIXELWATCH_MODEL"])
    mounts = {m["name"]: m for m in worker_container(resources)["volumeMounts"]}
    worker_mount = mounts[init_mount["name"]]
    assert worker_mount["readOnly"] is True
    assert PurePosixPath(worker_mount["mountPath"]) / PurePosixPath(destination).name == model
    # Writable places of the read-only root: faust's data dir and /tmp, both emptyDirs.
    writable = {m["mountPath"] for m in mounts.values() if not m.get("readOnly")}
    assert writable == {settings_data(resources)["PIXELWATCH_DATA_DIR"], "/tmp"}


def test_images_are_the_dockerfile_targets_tagged_with_the_package_version(
    resources: dict[str, Resource], kustomization: dict[str, Any]
) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    tags = {image["name"]: image["newTag"] for image in kustomization["images"]}
    assert tags == {"pixelwatch-worker": version, "pixelwatch-model": version}
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["initContainers"]] == ["pixelwatch-model"]
    assert [c["image"] for c in pod["containers"]] == ["pixelwatch-worker"]
    assert worker_container(resources)["args"] == parse_dockerfile().image("worker", {}).cmd


def test_scaled_object_scales_the_worker_on_lag_up_to_the_partition_count(
    resources: dict[str, Resource],
) -> None:
    scaled = resources["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) >= {"scaleTargetRef", "triggers"}  # required by the CRD
    deployment = resources["Deployment"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
        "envSourceContainerName": worker_container(resources)["name"],
    }
    partitions = int(settings_data(resources)["PIXELWATCH_PARTITIONS"])
    assert spec["maxReplicaCount"] == partitions
    # At least one worker always runs (no scale-to-zero), and never more than the partitions.
    assert spec["minReplicaCount"] >= 1
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    # The CRD types trigger metadata as map[string]string: an unquoted YAML bool is rejected.
    assert all(isinstance(v, str) for v in metadata.values()), metadata
    # Broker, group and topic are read from the worker's own settings.
    for parameter, setting in (
        ("bootstrapServersFromEnv", "PIXELWATCH_BOOTSTRAP"),
        ("consumerGroupFromEnv", "PIXELWATCH_GROUP_ID"),
        ("topicFromEnv", "PIXELWATCH_INPUT_TOPIC"),
    ):
        assert metadata[parameter] == setting and setting in settings_data(resources)
    assert int(metadata["lagThreshold"]) > 0
    assert metadata["allowIdleConsumers"] == "false"
    assert metadata["offsetResetPolicy"] == Settings().auto_offset_reset
    major, minor, _ = (int(n) for n in metadata["version"].split("."))
    assert (major, minor) >= (2, 1)  # Kafka 4 refuses older protocol versions (KIP-896)


def test_service_monitor_scrapes_the_worker_service_as_the_alerts_job(
    resources: dict[str, Resource],
) -> None:
    monitor = resources["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = resources["Service"]
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])
    # The job label is the Service's app.kubernetes.io/name: the job the alerts select.
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    prometheus = REPO / "deploy" / "prometheus" / "prometheus.yml"
    assert prometheus.is_file(), "deploy/prometheus/prometheus.yml is missing"
    jobs = [
        j["job_name"]
        for j in yaml.safe_load(prometheus.read_text())["scrape_configs"]
        if any("worker" in sd["names"] for sd in j.get("dns_sd_configs", []))
    ]
    assert jobs == [job]


def test_the_deployment_page_names_the_kubernetes_files_it_deploys() -> None:
    text = (REPO / "docs" / "deployment.md").read_text()
    assert "kubectl apply -k deploy/k8s" in text
    for path in sorted(K8S.glob("*.yaml")):
        assert str(Path("deploy/k8s") / path.name) in text or path.name in text, path.name


def prometheusrule_generator() -> Any:
    """deploy/prometheus/prometheusrule.py, a script rather than part of a package."""
    path = REPO / "deploy" / "prometheus" / "prometheusrule.py"
    spec = importlib.util.spec_from_file_location("pixelwatch_prometheusrule", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheus_rule_carries_exactly_the_tested_alert_rules(
    resources: dict[str, Resource], tmp_path: Path
) -> None:
    rule = resources["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}  # the CRD's spec has groups and nothing else
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    generator = prometheusrule_generator()
    assert (K8S / "prometheusrule.yaml").read_text() == generator.render(), (
        "stale: run make prometheusrule"
    )
    # The groups load in Prometheus as they are (the Operator hands them over unchanged).
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run deploy/prometheus-setup.sh"
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(extracted)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
