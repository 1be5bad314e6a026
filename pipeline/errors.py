"""Failures an operator fixes, their exit codes, and how Kafka's errors map to them.

Every ``dmedian`` command fails the same way: one line that names the cause and
the setting or command that fixes it, and an exit code a script can test (the
table is in README.md, "Exit codes"). Code raises these; the one handler at the
command's entry point (``pipeline/cli/main.py``) prints them, and turns any
``KafkaException`` that reaches it into one of them with :func:`from_kafka`.
"""

from __future__ import annotations

import logging
import re
from enum import IntEnum
from typing import ClassVar

from confluent_kafka import KafkaError, KafkaException

from config import Settings

__all__ = [
    "AuthenticationRefusedError",
    "EmptyTopicError",
    "ExitCode",
    "KafkaUnreachableError",
    "OperatorError",
    "PartitionMismatchError",
    "SettingsError",
    "TopicMissingError",
    "UnknownRecordVersionError",
    "from_kafka",
    "note_client_failure",
    "unreachable",
]

logger = logging.getLogger(__name__)


class ExitCode(IntEnum):
    """Exit codes of every ``dmedian`` command (README.md, "Exit codes")."""

    OK = 0
    FAILED = 1
    """A check failed (``verify``, ``watch --timeout``, the demo), or an unexpected error."""
    SETTINGS = 2
    """A bad setting or option, or topics on the cluster that conflict with the settings."""
    UNREACHABLE = 3
    """Kafka did not answer within ``kafka_timeout_ms``, or messages were not delivered."""
    AUTHENTICATION = 4
    """Kafka refused the TLS handshake, the authentication or the authorization."""
    TOPIC_MISSING = 5
    """A topic the command reads does not exist."""
    EMPTY = 6
    """A topic the command reads holds nothing to work on."""
    UNKNOWN_VERSION = 7
    """A record of a version this ``dmedian`` does not read."""


class OperatorError(Exception):
    """A failure the operator fixes; the message names the cause and the fix, on one line."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class SettingsError(OperatorError):
    """A setting or option is wrong, or contradicts what the cluster holds."""

    exit_code = ExitCode.SETTINGS


class PartitionMismatchError(SettingsError):
    """A topic's partition count differs from what the settings (or its spec) say."""


class KafkaUnreachableError(OperatorError):
    """Kafka did not answer within the wait (``kafka_timeout_ms``)."""

    exit_code = ExitCode.UNREACHABLE


class AuthenticationRefusedError(OperatorError):
    """Kafka refused the connection's security: TLS, SASL, or an ACL."""

    exit_code = ExitCode.AUTHENTICATION


class TopicMissingError(OperatorError):
    """A topic the command needs does not exist."""

    exit_code = ExitCode.TOPIC_MISSING


class EmptyTopicError(OperatorError):
    """A topic holds nothing for the command to work on."""

    exit_code = ExitCode.EMPTY


class UnknownRecordVersionError(OperatorError):
    """A record's version is not one this ``dmedian`` reads (written by a newer one?)."""

    exit_code = ExitCode.UNKNOWN_VERSION


_UNREACHABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)
_AUTHENTICATION = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.UNSUPPORTED_SASL_MECHANISM,
        KafkaError.ILLEGAL_SASL_STATE,
    }
)
_AUTHORIZATION = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)
_MISSING = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION})

# librdkafka reports a failed TLS or SASL handshake to the caller as a plain transport
# failure; the cause is only in its log line. The log route (pipeline/kafka/clients.py)
# hands the latest such line here, so the error can name the real cause.
_SECURITY_FAILURE = re.compile(r"SSL|TLS|SASL|[Aa]uthenticat|certificate", re.ASCII)
_recent_failure: list[str] = []

_SECURITY_SETTINGS = (
    "DMEDIAN_KAFKA_SECURITY_PROTOCOL, DMEDIAN_KAFKA_SASL_MECHANISM, DMEDIAN_KAFKA_SASL_USERNAME, "
    "DMEDIAN_KAFKA_SASL_PASSWORD, DMEDIAN_KAFKA_SSL_CAFILE"
)


def note_client_failure(text: str) -> None:
    """Remember a Kafka client's latest connection failure (a librdkafka log line)."""
    _recent_failure[:] = [text]


def _failure_detail() -> str | None:
    if not _recent_failure:
        return None
    # "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)"
    text = _recent_failure[0].split("/bootstrap: ", 1)[-1]
    return re.sub(r"\s*\(after \d+ms in state [^)]*\)$", "", text)


def unreachable(settings: Settings, doing: str = "") -> KafkaUnreachableError:
    """Kafka did not answer within ``kafka_timeout_ms``: name the address, the cause seen, and the fix."""
    detail = _failure_detail()
    fix = (
        "start it with `dmedian broker start`, or set KAFKA_BOOTSTRAP_SERVERS"
        if settings.uses_local_broker
        else "check KAFKA_BOOTSTRAP_SERVERS and that the brokers run"
    )
    what = f" ({doing})" if doing else ""
    seen = f": {detail}" if detail else ""
    return KafkaUnreachableError(
        f"Kafka at {settings.bootstrap_servers} did not answer within {settings.kafka_timeout_ms / 1000:g} s"
        f"{what}{seen}; {fix} (the wait is DMEDIAN_KAFKA_TIMEOUT_MS)"
    )


def from_kafka(exc: KafkaException | KafkaError, settings: Settings, doing: str = "") -> OperatorError:
    """The operator's view of a Kafka client error: its cause, and the setting that fixes it."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    if not isinstance(error, KafkaError):
        return OperatorError(f"Kafka at {settings.bootstrap_servers}: {exc}")
    code, text = error.code(), error.str()
    where, what, detail = settings.bootstrap_servers, f" ({doing})" if doing else "", _failure_detail()
    refused = code in _AUTHENTICATION or (code in _UNREACHABLE and detail and _SECURITY_FAILURE.search(detail))
    if refused:
        found: OperatorError = AuthenticationRefusedError(
            f"Kafka at {where} refused the connection{what}: {detail or text}; check {_SECURITY_SETTINGS}"
        )
    elif code in _AUTHORIZATION:
        found = AuthenticationRefusedError(
            f"Kafka at {where} refused access{what}: {text}; check the ACLs of DMEDIAN_KAFKA_SASL_USERNAME's user"
        )
    elif code in _UNREACHABLE:
        found = unreachable(settings, doing)
    elif code == KafkaError._INVALID_ARG:
        found = SettingsError(f"a Kafka client setting is invalid{what}: {text}; check the DMEDIAN_KAFKA_* settings")
    elif code in _MISSING:
        found = TopicMissingError(
            f"a topic or partition does not exist on {where}{what}: {text}; run `dmedian topics create`, "
            "or set DMEDIAN_APP_ID and DMEDIAN_TOPIC_* to the deployment's names"
        )
    else:
        found = OperatorError(f"Kafka at {where}{what}: {text}")
    return found
