"""How Kafka's errors become the operator's: cause, exit code, the setting named."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from config import Settings, load_settings
from pipeline.errors import (
    AuthenticationRefusedError,
    ExitCode,
    KafkaUnreachableError,
    OperatorError,
    SettingsError,
    TopicMissingError,
    from_kafka,
    note_client_failure,
)


def _settings(tmp_path: Path, **env: str) -> Settings:
    return load_settings(environ={"DMEDIAN_DATA_DIR": str(tmp_path), "DMEDIAN_KAFKA_TIMEOUT_MS": "7000", **env})


@pytest.fixture(autouse=True)
def _no_remembered_failure() -> None:
    note_client_failure("")


@pytest.mark.parametrize(
    ("code", "kind", "exit_code"),
    [
        (KafkaError._TRANSPORT, KafkaUnreachableError, ExitCode.UNREACHABLE),
        (KafkaError._ALL_BROKERS_DOWN, KafkaUnreachableError, ExitCode.UNREACHABLE),
        (KafkaError._MSG_TIMED_OUT, KafkaUnreachableError, ExitCode.UNREACHABLE),
        (KafkaError.SASL_AUTHENTICATION_FAILED, AuthenticationRefusedError, ExitCode.AUTHENTICATION),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, AuthenticationRefusedError, ExitCode.AUTHENTICATION),
        (KafkaError._UNKNOWN_PARTITION, TopicMissingError, ExitCode.TOPIC_MISSING),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, TopicMissingError, ExitCode.TOPIC_MISSING),
        (KafkaError._INVALID_ARG, SettingsError, ExitCode.SETTINGS),
        (KafkaError.MSG_SIZE_TOO_LARGE, OperatorError, ExitCode.FAILED),
    ],
)
def test_each_kafka_error_gets_its_cause_and_exit_code(
    tmp_path: Path, code: int, kind: type[OperatorError], exit_code: ExitCode
) -> None:
    error = from_kafka(KafkaException(KafkaError(code, "what librdkafka said")), _settings(tmp_path), "doing it")
    assert type(error) is kind
    assert error.exit_code == exit_code
    assert "127.0.0.1:9092" in str(error) or kind is SettingsError
    assert "\n" not in str(error)


def test_unreachable_names_the_address_the_wait_and_the_fix(tmp_path: Path) -> None:
    local = from_kafka(KafkaError(KafkaError._TRANSPORT), _settings(tmp_path))
    assert "did not answer within 7 s" in str(local)
    assert "dmedian broker start" in str(local)
    assert "DMEDIAN_KAFKA_TIMEOUT_MS" in str(local)
    remote = from_kafka(KafkaError(KafkaError._TRANSPORT), _settings(tmp_path, KAFKA_BOOTSTRAP_SERVERS="kafka-1:9093"))
    assert "Kafka at kafka-1:9093" in str(remote)
    assert "check KAFKA_BOOTSTRAP_SERVERS" in str(remote)


def test_a_transport_failure_after_a_refused_handshake_is_an_authentication_error(tmp_path: Path) -> None:
    # librdkafka reports a failed SASL or TLS handshake as a plain transport failure; its log line has the cause.
    note_client_failure(
        "sasl_ssl://b:9093/bootstrap: SASL authentication error: Authentication failed: Invalid username or password "
        "(after 12ms in state AUTH_REQ)"
    )
    error = from_kafka(KafkaError(KafkaError._TRANSPORT), _settings(tmp_path))
    assert isinstance(error, AuthenticationRefusedError)
    assert "Invalid username or password" in str(error)
    assert "(after" not in str(error)
    assert "DMEDIAN_KAFKA_SASL_PASSWORD" in str(error)


def test_a_refused_connection_is_named_in_the_unreachable_error(tmp_path: Path) -> None:
    note_client_failure("127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused "
                        "(after 0ms in state CONNECT)")  # fmt: skip
    error = from_kafka(KafkaError(KafkaError._TRANSPORT), _settings(tmp_path))
    assert isinstance(error, KafkaUnreachableError)
    assert str(error).count("Connection refused") == 1
