"""Kafka connection options from Settings: for faust and aiokafka (control plane, tools) and
for librdkafka (the data plane)."""

import ssl
from typing import Any

import faust
from aiokafka.helpers import create_ssl_context
from faust.auth import Credentials

from service.config import Settings
from service.observability.logs import librdkafka_level


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.security_protocol.endswith("SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
    )
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients (producer, consumer, admin)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
        "ssl_context": ssl_context(settings),
    }
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None  # Settings validated this
        options |= {
            "sasl_mechanism": settings.sasl_mechanism,
            "sasl_plain_username": settings.sasl_username,
            "sasl_plain_password": settings.sasl_password.get_secret_value(),
        }
    return options


def faust_credentials(settings: Settings) -> Credentials | None:
    context = ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None  # Settings validated this
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def librdkafka_config(settings: Settings) -> dict[str, str | int | float | bool]:
    """Connection properties for confluent-kafka (librdkafka) clients: the data plane's."""
    config: dict[str, str | int | float | bool] = {
        "bootstrap.servers": ",".join(settings.bootstrap_servers),
        "security.protocol": settings.security_protocol.lower(),
        "client.id": "pixelwatch",
        "log_level": librdkafka_level(settings.log_level),
        # Topics are created by the worker at start-up, never on the fly: a deleted output
        # topic stays deleted and shows up as delivery failures.
        "allow.auto.create.topics": False,
    }
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None  # Settings validated this
        config |= {
            "sasl.mechanism": settings.sasl_mechanism,
            "sasl.username": settings.sasl_username or "",
            "sasl.password": settings.sasl_password.get_secret_value(),
        }
    files = {
        "ssl.ca.location": settings.ssl_cafile,
        "ssl.certificate.location": settings.ssl_certfile,
        "ssl.key.location": settings.ssl_keyfile,
    }
    config |= {key: str(path) for key, path in files.items() if path is not None}
    return config
