"""Settings: defaults, environment and file overrides, and errors that name what is wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pydantic
import pytest

from config.settings import DEFAULT_FILE, ConfigError, Settings, load_settings


def load(**environ: str) -> Settings:
    return load_settings(environ=environ)


def config_error(**environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    return str(caught.value)


def test_defaults_come_from_the_default_file() -> None:
    settings = load()
    with DEFAULT_FILE.open("rb") as handle:
        defaults = tomllib.load(handle)
    assert settings.sketch_k == defaults["sketch_k"] == 200
    assert settings.quantiles == (0.5, 0.9, 0.99)
    assert settings.topic_numbers == defaults["topic_numbers"]
    assert settings.numbers_partitions == defaults["numbers_partitions"]
    assert settings.data_dir == Path(defaults["data_dir"])
    assert settings.uses_local_broker
    assert settings.bootstrap_servers == f"127.0.0.1:{defaults['local_broker_port']}"


def test_every_setting_of_the_default_file_is_known() -> None:
    with DEFAULT_FILE.open("rb") as handle:
        assert set(tomllib.load(handle)) == set(Settings.model_fields)


@pytest.mark.parametrize(
    ("name", "raw", "field", "value"),
    [
        ("DMEDIAN_SKETCH_K", "400", "sketch_k", 400),
        ("DMEDIAN_WEB_PORT", "8080", "web_port", 8080),
        ("DMEDIAN_ACCEPT_INFINITY", "true", "accept_infinity", True),
        ("DMEDIAN_TOPIC_NUMBERS", "in.numbers-v2", "topic_numbers", "in.numbers-v2"),
        ("DMEDIAN_LOG_LEVEL", "debug", "log_level", "debug"),
        ("DMEDIAN_DATA_DIR", "/tmp/dm", "data_dir", Path("/tmp/dm")),
    ],
)
def test_environment_variable_overrides_a_setting(name: str, raw: str, field: str, value: object) -> None:
    assert getattr(load(**{name: raw}), field) == value


def test_kafka_bootstrap_servers_follows_the_kafka_convention() -> None:
    settings = load(KAFKA_BOOTSTRAP_SERVERS="broker-1:9092,broker-2:9092")
    assert settings.kafka_bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert not settings.uses_local_broker


def test_quantiles_from_the_environment_are_split_sorted_and_deduplicated() -> None:
    assert load(DMEDIAN_QUANTILES="0.9, 0.5").quantiles == (0.5, 0.9)
    assert load(DMEDIAN_QUANTILES="0.99,0.5,0.99,").quantiles == (0.5, 0.99)


def test_config_file_overrides_defaults_and_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dmedian.toml"
    path.write_text('sketch_k = 300\nquantiles = [0.25, 0.75]\ntopic_medians = "out"\n')
    from_file = load(DMEDIAN_CONFIG=str(path))
    assert (from_file.sketch_k, from_file.quantiles, from_file.topic_medians) == (300, (0.25, 0.75), "out")
    assert from_file.web_port == 6066  # untouched settings keep their defaults
    both = load(DMEDIAN_CONFIG=str(path), DMEDIAN_SKETCH_K="500")
    assert (both.sketch_k, both.topic_medians) == (500, "out")


def test_explicit_overrides_win_over_the_environment() -> None:
    settings = load_settings({"sketch_k": 64}, environ={"DMEDIAN_SKETCH_K": "500"})
    assert settings.sketch_k == 64


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    message = config_error(DMEDIAN_CONFIG=str(missing))
    assert "DMEDIAN_CONFIG" in message
    assert str(missing) in message


def test_invalid_toml_in_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("sketch_k = = 3\n")
    assert str(path) in config_error(DMEDIAN_CONFIG=str(path))


def test_invalid_value_in_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("sketch_k = 3\n")
    message = config_error(DMEDIAN_CONFIG=str(path))
    assert "sketch_k (DMEDIAN_SKETCH_K) = 3" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("name", "raw", "setting"),
    [
        ("DMEDIAN_SKETCH_K", "3", "sketch_k"),
        ("DMEDIAN_SKETCH_K", "ten", "sketch_k"),
        ("DMEDIAN_WEB_PORT", "abc", "web_port"),
        ("DMEDIAN_WEB_PORT", "70000", "web_port"),
        ("DMEDIAN_QUANTILES", "0.5, 1.5", "quantiles"),
        ("DMEDIAN_QUANTILES", "-0.1", "quantiles"),
        ("DMEDIAN_QUANTILES", " , ", "quantiles"),
        ("DMEDIAN_TOPIC_NUMBERS", "bad topic!", "topic_numbers"),
        ("DMEDIAN_TOPIC_SKETCHES", "..", "topic_sketches"),
        ("DMEDIAN_TOPIC_MEDIANS", "x" * 250, "topic_medians"),
        ("DMEDIAN_LOG_LEVEL", "loud", "log_level"),
        ("DMEDIAN_ACCEPT_INFINITY", "maybe", "accept_infinity"),
        ("DMEDIAN_MAX_VALUE_BYTES", "63", "max_value_bytes"),
    ],
)
def test_invalid_value_names_setting_env_var_and_bad_value(name: str, raw: str, setting: str) -> None:
    message = config_error(**{name: raw})
    assert f"{setting} ({name}) = {raw!r}" in message
    assert f"environment variable {name}" in message


def test_invalid_bootstrap_servers_names_the_kafka_variable() -> None:
    with pytest.raises(ConfigError, match=r"kafka_bootstrap_servers \(KAFKA_BOOTSTRAP_SERVERS\) = 5"):
        load_settings({"kafka_bootstrap_servers": 5}, environ={})


def test_unknown_dmedian_variable_is_refused_by_name() -> None:
    message = config_error(DMEDIAN_FOO="1")
    assert "unknown setting DMEDIAN_FOO='1'" in message
    assert "sketch_k" in message  # lists the known settings


@pytest.mark.parametrize("name", ["DMEDIAN_PYTHON", "DMEDIAN_KAFKA_CACHE", "DMEDIAN_TEST_X"])
def test_tooling_variables_with_the_prefix_are_not_settings(name: str) -> None:
    assert load(**{name: "whatever"}).sketch_k == 200


def test_duplicate_topic_names_name_the_clashing_setting() -> None:
    message = config_error(DMEDIAN_TOPIC_SKETCHES="numbers")
    assert "topic names must be distinct" in message
    assert "DMEDIAN_TOPIC_SKETCHES" in message
    assert "'numbers'" in message


def test_sasl_mechanism_without_sasl_protocol_names_both_settings() -> None:
    message = config_error(DMEDIAN_KAFKA_SASL_MECHANISM="PLAIN")
    assert "kafka_security_protocol is not SASL_*" in message
    assert "DMEDIAN_KAFKA_SASL_MECHANISM" in message
    assert "DMEDIAN_KAFKA_SECURITY_PROTOCOL" in message


def test_config_error_never_shows_the_sasl_password() -> None:
    message = config_error(DMEDIAN_KAFKA_SASL_MECHANISM="PLAIN", DMEDIAN_KAFKA_SASL_PASSWORD="hunter2-secret")
    assert "hunter2-secret" not in message


def test_sasl_mechanism_with_sasl_protocol_is_accepted() -> None:
    settings = load(DMEDIAN_KAFKA_SASL_MECHANISM="SCRAM-SHA-512", DMEDIAN_KAFKA_SECURITY_PROTOCOL="SASL_SSL")
    assert (settings.kafka_sasl_mechanism, settings.kafka_security_protocol) == ("SCRAM-SHA-512", "SASL_SSL")


def test_password_is_not_in_the_settings_repr() -> None:
    assert "hunter2-secret" not in repr(load(DMEDIAN_KAFKA_SASL_PASSWORD="hunter2-secret"))


def test_settings_are_frozen() -> None:
    settings = load()
    with pytest.raises(pydantic.ValidationError):
        settings.sketch_k = 400
    assert settings.sketch_k == 200


def test_settings_refuse_unknown_fields_in_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "extra.toml"
    path.write_text("sketch_kk = 300\n")
    assert "sketch_kk" in config_error(DMEDIAN_CONFIG=str(path))


# --- emission ---------------------------------------------------------------------------------


def test_emission_defaults_come_from_the_default_file() -> None:
    settings = load()
    with DEFAULT_FILE.open("rb") as handle:
        defaults = tomllib.load(handle)
    assert settings.emission_rule == defaults["emission_rule"] == "budget"
    assert settings.error_budget == defaults["error_budget"] == 0.005
    assert settings.heartbeat_ms == defaults["heartbeat_ms"] == 10_000
    assert settings.geometric_growth == defaults["geometric_growth"] == 2.0


@pytest.mark.parametrize(
    ("name", "raw", "field", "value"),
    [
        ("DMEDIAN_EMISSION_RULE", "interval", "emission_rule", "interval"),
        ("DMEDIAN_EMISSION_RULE", "geometric", "emission_rule", "geometric"),
        ("DMEDIAN_ERROR_BUDGET", "0.01", "error_budget", 0.01),
        ("DMEDIAN_ERROR_BUDGET", "0.5", "error_budget", 0.5),
        ("DMEDIAN_HEARTBEAT_MS", "2500", "heartbeat_ms", 2500),
        ("DMEDIAN_GEOMETRIC_GROWTH", "1.5", "geometric_growth", 1.5),
    ],
)
def test_emission_settings_come_from_the_environment(name: str, raw: str, field: str, value: object) -> None:
    assert getattr(load(**{name: raw}), field) == value


@pytest.mark.parametrize(
    ("name", "raw", "setting", "why"),
    [
        ("DMEDIAN_EMISSION_RULE", "sometimes", "emission_rule", "'budget', 'interval' or 'geometric'"),
        ("DMEDIAN_ERROR_BUDGET", "0", "error_budget", "greater than 0"),
        ("DMEDIAN_ERROR_BUDGET", "-0.01", "error_budget", "greater than 0"),
        ("DMEDIAN_ERROR_BUDGET", "0.6", "error_budget", "less than or equal to 0.5"),
        ("DMEDIAN_ERROR_BUDGET", "half", "error_budget", "valid number"),
        ("DMEDIAN_HEARTBEAT_MS", "0", "heartbeat_ms", "greater than or equal to 1"),
        ("DMEDIAN_GEOMETRIC_GROWTH", "1", "geometric_growth", "greater than 1"),
        ("DMEDIAN_GEOMETRIC_GROWTH", "0.5", "geometric_growth", "greater than 1"),
    ],
)
def test_invalid_emission_setting_names_setting_and_reason(name: str, raw: str, setting: str, why: str) -> None:
    message = config_error(**{name: raw})
    assert f"{setting} ({name}) = {raw!r}" in message
    assert why in message


def test_heartbeat_shorter_than_the_publish_interval_names_both_settings() -> None:
    message = config_error(DMEDIAN_HEARTBEAT_MS="100", DMEDIAN_PUBLISH_INTERVAL_MS="200")
    assert "DMEDIAN_HEARTBEAT_MS=100" in message
    assert "DMEDIAN_PUBLISH_INTERVAL_MS=200" in message
    assert load(DMEDIAN_HEARTBEAT_MS="200", DMEDIAN_PUBLISH_INTERVAL_MS="200").heartbeat_ms == 200
