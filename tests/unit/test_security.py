"""Security basics: Kafka SASL/SSL settings reach every client, listeners bind loopback, no pickle.

The clients are built from settings exactly as the worker and the CLI build
them; the Faust app is built (never started) and its configuration inspected.
"""

from __future__ import annotations

import ast
import logging
import ssl
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from confluent_kafka import KafkaException
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from config import ConfigError, Settings, load_settings
from pipeline.app.factory import broker_credentials, create_app
from pipeline.kafka import clients
from pipeline.localbroker import free_port

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-hunter2-do-not-log"
# A throwaway self-signed CA certificate (public; its key was never kept): ssl and librdkafka must load it.
TEST_CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUGs0wl9embAfZeabXP0ze85qRtZYwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPZG1lZGlhbi10ZXN0LWNhMCAXDTI2MTEyODIyMDAwN1oYDzIx
MjYxMTA0MjIwMDA3WjAaMRgwFgYDVQQDDA9kbWVkaWFuLXRlc3QtY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAASGs58HC+oD5FjJy0n/m+Fa91pXJEXWiWzErqdm
jyw+XRYu9/RjjHy1tgcXgh+q0o8VLLAY3OpaTuel+RKAYHIEo1MwUTAdBgNVHQ4E
FgQUMv8ErP/HmQNhpwsHLoo8knMTXSMwHwYDVR0jBBgwFoAUMv8ErP/HmQNhpwsH
Loo8knMTXSMwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiBhk8vH
1nzGnDqLCAu88M/AI4YJ3g0WmqvPWGHDZkGKWQIhAMero5SFnEYW3ZlfItqA8ixz
vo2rbVmbdFsJIt4s6b1A
-----END CERTIFICATE-----
"""


@pytest.fixture
def cafile(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text(TEST_CA_PEM)
    return path


def secured(cafile: Path, tmp_path: Path, protocol: str = "SASL_SSL", mechanism: str = "SCRAM-SHA-256") -> Settings:
    """Settings as an operator sets them: from the environment."""
    environ = {
        # A closed loopback port: clients built here may try to connect, never beyond this machine.
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "DMEDIAN_KAFKA_SECURITY_PROTOCOL": protocol,
        "DMEDIAN_KAFKA_SASL_MECHANISM": mechanism if protocol.startswith("SASL") else "",
        "DMEDIAN_KAFKA_SASL_USERNAME": "svc-median",
        "DMEDIAN_KAFKA_SASL_PASSWORD": PASSWORD,
        "DMEDIAN_KAFKA_SSL_CAFILE": str(cafile) if protocol.endswith("SSL") else "",
        "DMEDIAN_DATA_DIR": str(tmp_path / "data"),
    }
    return load_settings(environ=environ)


# --- confluent-kafka clients --------------------------------------------------------------------

SECURITY_KEYS = ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location")


@pytest.mark.parametrize(
    ("protocol", "mechanism", "keys"),
    [
        ("SASL_SSL", "SCRAM-SHA-256", SECURITY_KEYS),
        ("SASL_SSL", "SCRAM-SHA-512", SECURITY_KEYS),
        ("SASL_PLAINTEXT", "PLAIN", SECURITY_KEYS[:4]),
        ("SSL", "", ("security.protocol", "ssl.ca.location")),
    ],
)
def test_client_config_carries_the_security_settings(
    cafile: Path, tmp_path: Path, protocol: str, mechanism: str, keys: tuple[str, ...]
) -> None:
    settings = secured(cafile, tmp_path, protocol, mechanism)
    config = clients.client_config(settings)
    assert {key for key in config if key in SECURITY_KEYS} == set(keys)
    assert config["bootstrap.servers"] == settings.bootstrap_servers
    assert config["security.protocol"] == protocol
    if "sasl.mechanism" in keys:
        assert (config["sasl.mechanism"], config["sasl.username"], config["sasl.password"]) == (
            mechanism, "svc-median", PASSWORD,
        )  # fmt: skip
    if "ssl.ca.location" in keys:
        assert config["ssl.ca.location"] == str(cafile)


def test_plaintext_client_config_has_no_credentials(tmp_path: Path) -> None:
    config = clients.client_config(load_settings(environ={"DMEDIAN_DATA_DIR": str(tmp_path)}))
    assert config["security.protocol"] == "PLAINTEXT"
    assert not {key for key in config if key.startswith(("sasl.", "ssl."))}


class _Recorder:
    """Stands in for a confluent-kafka client class: records the configuration it is built with."""

    built: list[tuple[str, dict[str, Any]]]

    def __init__(self, kind: str, built: list[tuple[str, dict[str, Any]]]) -> None:
        self.kind, self.built = kind, built

    def __call__(self, config: dict[str, Any], **_kwargs: Any) -> _Recorder:
        self.built.append((self.kind, dict(config)))
        return self


def test_every_client_builder_passes_the_security_settings(
    cafile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = secured(cafile, tmp_path)
    built: list[tuple[str, dict[str, Any]]] = []
    for kind in ("Producer", "Consumer", "AdminClient"):
        monkeypatch.setattr(clients, kind, _Recorder(kind, built))
    clients.producer(settings)
    clients.producer(settings, linger_ms=0, acks="all")
    clients.consumer(settings, "group-a")
    clients.consumer(settings, "group-b", enable_partition_eof=False)
    clients.admin_client(settings)
    assert [kind for kind, _ in built] == ["Producer", "Producer", "Consumer", "Consumer", "AdminClient"]
    expected = {key: clients.client_config(settings)[key] for key in SECURITY_KEYS}
    for kind, config in built:
        assert {key: config.get(key) for key in SECURITY_KEYS} == expected, kind


def test_real_clients_accept_the_secured_configuration(cafile: Path, tmp_path: Path) -> None:
    # librdkafka checks the mechanism and loads the CA file when the client is made: a typo fails here.
    settings = secured(cafile, tmp_path)
    producer = clients.producer(settings)
    consumer = clients.consumer(settings, "security-test")
    clients.admin_client(settings)
    producer.flush(0)
    consumer.close()


def test_a_ca_file_that_is_not_a_certificate_fails_the_client_loudly(cafile: Path, tmp_path: Path) -> None:
    cafile.write_text("not a certificate")
    settings = secured(cafile, tmp_path)
    with pytest.raises(KafkaException, match=r"ssl\.ca\.location failed"):
        clients.producer(settings)


# --- the Faust app ------------------------------------------------------------------------------


def test_sasl_ssl_gives_faust_sasl_credentials_with_a_verifying_ssl_context(cafile: Path, tmp_path: Path) -> None:
    credentials = broker_credentials(secured(cafile, tmp_path, "SASL_SSL", "SCRAM-SHA-512"))
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("svc-median", PASSWORD)
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.protocol.value == "SASL_SSL"
    context = credentials.ssl_context
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert any(("commonName", "dmedian-test-ca") in rdn for ca in context.get_ca_certs() for rdn in ca["subject"])
    # What Faust's aiokafka driver hands every consumer and producer it makes.
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("svc-median", PASSWORD)
    assert auth["ssl_context"] is context
    assert PASSWORD not in repr(credentials)


def test_ssl_gives_faust_ssl_credentials(cafile: Path, tmp_path: Path) -> None:
    credentials = broker_credentials(secured(cafile, tmp_path, "SSL"))
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol.value == "SSL"
    assert isinstance(credentials.context, ssl.SSLContext)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"


def test_sasl_plaintext_gives_credentials_without_tls(cafile: Path, tmp_path: Path) -> None:
    credentials = broker_credentials(secured(cafile, tmp_path, "SASL_PLAINTEXT", "PLAIN"))
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_PLAINTEXT"
    assert credentials.ssl_context is None


def test_plaintext_gives_no_credentials(tmp_path: Path) -> None:
    assert broker_credentials(load_settings(environ={"DMEDIAN_DATA_DIR": str(tmp_path)})) is None


@pytest.fixture
def secured_app(cafile: Path, tmp_path: Path) -> faust.App:
    return create_app(secured(cafile, tmp_path)).app


def test_the_faust_app_carries_the_credentials(secured_app: faust.App) -> None:
    credentials = secured_app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-256"
    assert (credentials.username, credentials.password) == ("svc-median", PASSWORD)
    assert isinstance(credentials.ssl_context, ssl.SSLContext)


def test_the_faust_app_serializes_with_raw_bytes_never_pickle(secured_app: faust.App) -> None:
    conf = secured_app.conf
    assert (conf.key_serializer, conf.value_serializer) == ("raw", "raw")
    channels = [agent.channel for agent in secured_app.agents.values()]
    changelogs = [table.changelog_topic for table in secured_app.tables.values()]
    assert channels
    assert changelogs
    for topic in [*channels, *changelogs]:
        assert (topic.key_serializer, topic.value_serializer) == ("raw", "raw"), topic
    for table in secured_app.tables.values():
        assert (table.key_serializer, table.value_serializer) == ("raw", "raw"), table


def test_the_web_server_binds_loopback_by_default(tmp_path: Path) -> None:
    settings = load_settings(environ={"DMEDIAN_DATA_DIR": str(tmp_path)})
    assert settings.web_host == "127.0.0.1"
    conf = create_app(settings).app.conf
    assert (conf.web_bind, conf.web_host) == ("127.0.0.1", "127.0.0.1")


def test_the_web_server_binds_what_is_configured(tmp_path: Path) -> None:
    settings = load_settings(environ={"DMEDIAN_DATA_DIR": str(tmp_path), "DMEDIAN_WEB_HOST": "0.0.0.0"})
    assert create_app(settings).app.conf.web_bind == "0.0.0.0"


# --- the password stays secret ------------------------------------------------------------------


def test_the_password_is_in_no_repr_of_settings_or_credentials(cafile: Path, tmp_path: Path) -> None:
    settings = secured(cafile, tmp_path)
    assert settings.kafka_sasl_password == PASSWORD
    for text in (repr(settings), str(settings), repr(broker_credentials(settings))):
        assert PASSWORD not in text


@pytest.mark.parametrize(
    "bad",
    [
        {"DMEDIAN_WEB_PORT": "not-a-port"},
        {"DMEDIAN_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},  # a SASL mechanism without a SASL protocol
        {"DMEDIAN_KAFKA_SASL_MECHANISM": "MD5"},
        {"DMEDIAN_NO_SUCH_SETTING": "1"},
        {"DMEDIAN_TOPIC_NUMBERS": "no spaces allowed"},
    ],
)
def test_the_password_is_in_no_configuration_error(bad: dict[str, str]) -> None:
    environ = {
        "DMEDIAN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "DMEDIAN_KAFKA_SASL_MECHANISM": "PLAIN",
        "DMEDIAN_KAFKA_SASL_PASSWORD": PASSWORD,
    } | bad
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    # Not in the message, nor anywhere in the traceback a crash would print.
    assert PASSWORD not in "".join(traceback.format_exception(caught.value))


def test_a_password_of_the_wrong_type_in_a_config_file_is_masked(tmp_path: Path) -> None:
    config = tmp_path / "dmedian.toml"
    config.write_text(f'kafka_sasl_password = ["{PASSWORD}"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"DMEDIAN_CONFIG": str(config)})
    assert "kafka_sasl_password" in str(caught.value)
    assert PASSWORD not in "".join(traceback.format_exception(caught.value))


def test_nothing_logs_the_password_while_clients_and_the_app_are_built(
    cafile: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        settings = secured(cafile, tmp_path)
        create_app(settings)
        clients.admin_client(settings)
    assert PASSWORD not in caplog.text


# --- the source: no unsafe deserialization, no client that bypasses the settings -----------------

SOURCE_DIRS = ("pipeline", "topics", "config")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
UNSAFE_CALLS = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "read_pickle"}
KAFKA_CLIENTS = {"Producer", "Consumer", "AdminClient", "SerializingProducer", "DeserializingConsumer",
                 "AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}  # fmt: skip
CLIENT_BUILDERS = {"pipeline/kafka/clients.py"}
CLIENTS_ALLOWED_ELSEWHERE = {
    # The embedded broker's own readiness probe: PLAINTEXT on 127.0.0.1, before any user cluster is involved.
    "pipeline/localbroker.py": 1,
}


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for directory in SOURCE_DIRS:
        for path in sorted((REPO / directory).rglob("*.py")):
            yield path.relative_to(REPO).as_posix(), ast.parse(path.read_text(), filename=str(path))


def _unsafe_uses(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module}")
        elif isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id in {"yaml", "pd", "pandas"}
                and func.attr in UNSAFE_CALLS
            ):
                found.append(f"{func.value.id}.{func.attr}(line {node.lineno})")
            if any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and not k.value.value)
                   for k in node.keywords):  # fmt: skip
                found.append(f"allow_pickle (line {node.lineno})")
            if isinstance(func, ast.Name) and func.id in {"eval", "exec"}:
                found.append(f"{func.id}(line {node.lineno})")
    return found


def _client_constructions(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in KAFKA_CLIENTS:
                found.append(f"{name}(line {node.lineno})")
    return found


def test_the_source_scan_finds_what_it_looks_for() -> None:
    # The scanner must be able to fail.
    tree = ast.parse(
        "import pickle\nfrom marshal import loads\nimport yaml\nyaml.load(x)\nnp.load(f, allow_pickle=True)\n"
        "Producer({})\nconfluent_kafka.Consumer({})\n"
    )
    assert len(_unsafe_uses(tree)) == 4
    assert len(_client_constructions(tree)) == 2
    assert _unsafe_uses(ast.parse("yaml.safe_load(x)\nnp.load(f, allow_pickle=False)\n")) == []


def test_nothing_deserializes_untrusted_bytes_with_pickle_marshal_or_yaml_load() -> None:
    offenders = {path: uses for path, tree in _sources() if (uses := _unsafe_uses(tree))}
    assert offenders == {}


def test_every_kafka_client_is_built_from_settings_in_one_module() -> None:
    counts = {path: len(found) for path, tree in _sources() if (found := _client_constructions(tree))}
    assert set(CLIENT_BUILDERS) <= set(counts), "the builders moved: update this test"
    elsewhere = {path: count for path, count in counts.items() if path not in CLIENT_BUILDERS}
    assert elsewhere == CLIENTS_ALLOWED_ELSEWHERE, (
        "build confluent-kafka clients with pipeline.kafka.clients (they carry the security settings)"
    )
