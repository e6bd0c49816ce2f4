"""Why a Kafka connection failed: refused credentials or TLS are not an unreachable broker.

aiokafka reports every failed bootstrap as `KafkaConnectionError("Unable to bootstrap")` and
logs the real cause on a line of its own. Retrying a wrong password for the whole connect
timeout helps nobody, so on a failure we open one connection ourselves and look at what it
raises: an authentication or TLS error ends start-up at once, in one line naming it.
"""

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator
from typing import Any, Final

from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from service.config import Settings
from service.errors import PixelwatchError
from service.kafka.options import ssl_context
from service.untrusted import clean

_SASL_ERRORS: Final = (
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)
# aiokafka's line for each failed bootstrap; we say what happened ourselves.
_BOOTSTRAP_LOGGER: Final = "aiokafka"


class KafkaRefused(PixelwatchError):
    """The broker answers but refuses this client: credentials, mechanism or TLS."""


async def refusal(settings: Settings, timeout: float = 10.0) -> str | None:
    """What refused us, if a bootstrap server answers and rejects the connection; None when
    none can be reached at all (down, wrong address, firewall): that one is worth retrying."""
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(_connect(settings, host, int(port)), timeout)
        except _SASL_ERRORS as exc:
            user = settings.sasl_username or ""
            return (
                f"SASL authentication as {clean(user)!r} with {settings.sasl_mechanism} was "
                f"refused by {server}: {clean(str(exc), 300)}"
            )
        except ssl.SSLCertVerificationError as exc:
            reason = clean(exc.verify_message or str(exc))
            return f"TLS certificate of {server} not accepted: {reason}"
        except ssl.SSLError as exc:
            return f"TLS handshake with {server} failed: {clean(exc.reason or str(exc))}"
        except (OSError, KafkaError, TimeoutError, ValueError):
            continue
        conn.close()
    return None


async def _connect(settings: Settings, host: str, port: int) -> Any:
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    sasl = settings.security_protocol.startswith("SASL")
    return await create_conn(
        host,
        port,
        client_id="pixelwatch",
        request_timeout_ms=10_000,
        ssl_context=ssl_context(settings),
        security_protocol=settings.security_protocol,
        sasl_mechanism=settings.sasl_mechanism if sasl else None,
        sasl_plain_username=settings.sasl_username if sasl else None,
        sasl_plain_password=password if sasl else None,
    )


async def unavailable(settings: Settings, detail: str) -> PixelwatchError:
    """The one-line error for a client that could not connect: the refusal if there is one."""
    refused = await refusal(settings)
    if refused is not None:
        return KafkaRefused(refused)
    return PixelwatchError(f"Kafka at {settings.bootstrap} not reachable ({detail})")


class _Drop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def quiet_bootstrap() -> Iterator[None]:
    """Silence aiokafka's per-attempt connection lines while we report attempts ourselves."""
    logger = logging.getLogger(_BOOTSTRAP_LOGGER)
    drop = _Drop()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
