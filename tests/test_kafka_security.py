"""SASL/SCRAM and TLS on a real broker: refused credentials or certificates are named in one
line at once, instead of being retried for the whole connect timeout as an unreachable broker.
"""

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest

from service.kafka.broker import LocalBroker, free_port
from service.samples import SEED_TEST
from worker_harness import WorkerProcess, WorkerTopics, consume_until, produce, worker_env

pytestmark = pytest.mark.kafka

USER, PASSWORD = "alice", "alice-secret"


@dataclass(frozen=True)
class SecuredBroker:
    broker: LocalBroker
    sasl: str  # bootstrap of the SASL_PLAINTEXT (SCRAM-SHA-512) listener
    tls: str  # bootstrap of the SSL listener, whose certificate names 127.0.0.1
    ca: Path  # the CA that signed it
    other_ca: Path  # a CA that did not


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    assert shutil.which("openssl"), "openssl is needed to make the test certificates"
    days = ["-days", "2"]
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            *days, "-subj", "/CN=pixelwatch test CA", cwd=directory)  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key",
            "-out", "other.pem", *days, "-subj", "/CN=another CA", cwd=directory)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", *days, "-extfile", "san.ext",
            cwd=directory)  # fmt: skip
    # Kafka reads a PEM key store: the (unencrypted PKCS#8) key, then the certificate.
    pem = (directory / "server.key").read_text() + (directory / "server.crt").read_text()
    (directory / "server.pem").write_text(pem)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    certs = tmp_path_factory.mktemp("certs")
    make_certificates(certs)
    sasl, tls = free_port(), free_port()
    broker = LocalBroker(
        port=free_port(),
        data_dir=tmp_path_factory.mktemp("secured-kafka"),
        listeners={"SASL_PLAINTEXT": sasl, "SSL": tls},
        scram_users={USER: PASSWORD},
        properties={
            "listener.name.ssl.ssl.keystore.type": "PEM",
            "listener.name.ssl.ssl.keystore.location": str(certs / "server.pem"),
        },
    )
    with broker:
        yield SecuredBroker(
            broker, f"127.0.0.1:{sasl}", f"127.0.0.1:{tls}", certs / "ca.pem", certs / "other.pem"
        )


def sasl_env(password: str) -> dict[str, str]:
    return {
        "PIXELWATCH_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "PIXELWATCH_SASL_MECHANISM": "SCRAM-SHA-512",
        "PIXELWATCH_SASL_USERNAME": USER,
        "PIXELWATCH_SASL_PASSWORD": password,
    }


def run_worker(bootstrap: str, model: Path, tmp_path: Path, **env: str) -> str:
    """`pixelwatch worker` to its end; a retried refusal would outlast the 60 s timeout."""
    settings = worker_env(bootstrap, WorkerTopics(), model, tmp_path / "state", **env)
    settings["PIXELWATCH_CONNECT_TIMEOUT"] = "600"
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker"],
        env={"PATH": "/usr/bin:/bin", **settings},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "not reachable" not in result.stderr
    lines = result.stderr.strip().splitlines()
    # Before it: the INFO line naming the model; no retry, and none of aiokafka's lines.
    assert not [line for line in lines[:-1] if "WARNING" in line or "ERROR" in line], lines
    return lines[-1]


def test_a_wrong_sasl_password_is_named_in_one_line_at_once(
    secured: SecuredBroker, seed_model_path: Path, tmp_path: Path
) -> None:
    line = run_worker(secured.sasl, seed_model_path, tmp_path, **sasl_env("wrong"))
    assert line.startswith(
        f"error: SASL authentication as '{USER}' with SCRAM-SHA-512 was refused by {secured.sasl}: "
    )
    assert "wrong" not in line  # the password is never printed
    assert "invalid credentials" in line


def test_an_untrusted_broker_certificate_is_named_in_one_line_at_once(
    secured: SecuredBroker, seed_model_path: Path, tmp_path: Path
) -> None:
    line = run_worker(
        secured.tls, seed_model_path, tmp_path,
        PIXELWATCH_SECURITY_PROTOCOL="SSL", PIXELWATCH_SSL_CAFILE=str(secured.other_ca),
    )  # fmt: skip
    assert line.startswith(f"error: TLS certificate of {secured.tls} not accepted: ")
    assert "issuer certificate" in line


def test_produce_with_a_wrong_password_is_one_line_too(secured: SecuredBroker) -> None:
    command = [sys.executable, "-m", "service.cli", "produce", str(SEED_TEST)]
    result = subprocess.run(
        [*command, "--bootstrap", secured.sasl],
        env={"PATH": "/usr/bin:/bin", **sasl_env("wrong")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: SASL authentication as 'alice' ")
    assert result.stderr.count("\n") == 1


async def test_with_the_right_credentials_the_worker_scores_over_sasl(
    secured: SecuredBroker, seed_model_path: Path, tmp_path: Path
) -> None:
    topics = WorkerTopics()
    env = worker_env(secured.sasl, topics, seed_model_path, tmp_path / "s", **sasl_env(PASSWORD))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        pixels = orjson.dumps({"id": "over-sasl", "pixels": np.zeros(64).tolist()})
        # The test's own clients use the broker's PLAINTEXT listener.
        plain = secured.broker.bootstrap
        await produce(plain, topics.images, [(b"over-sasl", pixels)])
        records = await consume_until(
            plain, [topics.scores], lambda r: len(r[topics.scores]) >= 1, alive=worker.alive
        )
        assert [r.key for r in records[topics.scores]] == [b"over-sasl"]
        assert worker.stop() == 0, worker.output()[-2000:]
    finally:
        worker.stop()
