"""Loading and validating settings.

Precedence, highest first: explicit overrides (tests, CLI flags), environment
variables (``DMEDIAN_<SETTING>``, and ``KAFKA_BOOTSTRAP_SERVERS``), the TOML file
named by ``DMEDIAN_CONFIG``, and ``config/default.toml``. An invalid value stops
the program with a :class:`ConfigError` naming the setting and the bad value.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["DEFAULT_FILE", "ENV_PREFIX", "ConfigError", "Settings", "load_settings"]

logger = logging.getLogger(__name__)

DEFAULT_FILE = Path(__file__).with_name("default.toml")
ENV_PREFIX = "DMEDIAN_"
# Environment variables with our prefix that are not settings: the user's config
# file, and the tooling's (the broker script's python and jar cache, test knobs).
_NOT_SETTINGS = ("CONFIG", "PYTHON", "KAFKA_CACHE", "TEST_")
_TOPIC_SETTINGS = ("topic_numbers", "topic_sketches", "topic_medians", "topic_dead_letters")
_SECRET_SETTINGS = frozenset({"kafka_sasl_password"})
_TOPIC_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid. The message names it."""


class Settings(BaseModel):
    """Every setting of DistributedMedian. See ``config/default.toml`` for documentation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kafka_bootstrap_servers: str = ""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = Field(default="", repr=False)
    kafka_ssl_cafile: str = ""
    local_broker_port: int = Field(default=9092, ge=1, le=65534)
    kafka_timeout_ms: int = Field(default=30_000, ge=1_000, le=3_600_000)

    app_id: str = Field(default="dmedian", min_length=1)
    topic_numbers: str = "numbers"
    topic_sketches: str = "sketches"
    topic_medians: str = "medians"
    topic_dead_letters: str = "dead-letters"
    numbers_partitions: int = Field(default=8, ge=1, le=100_000)
    shard_id_limit: int = Field(default=0, ge=0, le=1_000_000)
    replication_factor: int = Field(default=1, ge=1, le=32)
    numbers_retention_ms: int = Field(default=604_800_000, ge=-1)

    sketch_k: int = Field(default=200, ge=8, le=65_535)
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)

    emit_interval_ms: int = Field(default=200, ge=1, le=3_600_000)
    publish_interval_ms: int = Field(default=200, ge=1, le=3_600_000)
    emission_rule: Literal["budget", "interval", "geometric"] = "budget"
    error_budget: float = Field(default=0.005, gt=0.0, le=0.5)
    heartbeat_ms: int = Field(default=10_000, ge=1, le=3_600_000)
    geometric_growth: float = Field(default=2.0, gt=1.0, le=1_000.0)

    delivery: Literal["batch", "event"] = "batch"
    fetcher: Literal["aiokafka", "librdkafka"] = "librdkafka"
    batch_max_events: int = Field(default=10_000, ge=1, le=1_000_000)
    batch_within_ms: int = Field(default=100, ge=1, le=60_000)

    accept_infinity: bool = False
    max_value_bytes: int = Field(default=8 * 1024 * 1024, ge=64)

    source_id_pattern: str = Field(default=r"[A-Za-z0-9_-]{1,64}", min_length=1)
    max_sources: int = Field(default=10_000, ge=1, le=1_000_000)
    source_messages_per_s: float = Field(default=5.0, gt=0.0, le=100_000.0)
    source_burst: int = Field(default=20, ge=1, le=1_000_000)
    max_source_sketch_bytes: int = Field(default=64 * 1024, ge=1024, le=64 * 1024 * 1024)
    source_clock_ahead_ms: int = Field(default=300_000, ge=0, le=86_400_000)

    session_timeout_ms: int = Field(default=10_000, ge=3_000, le=300_000)
    data_dir: Path = Path("var/dmedian")
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    state_store: Literal["one-db", "per-partition"] = "one-db"
    standby_replicas: int = Field(default=1, ge=0, le=16)
    metrics_shard_series: int = Field(default=20, ge=-1, le=1_000_000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("quantiles", mode="before")
    @classmethod
    def _split_quantiles(cls, value: Any) -> Any:
        # From the environment quantiles come as "0.5,0.9,0.99".
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("quantiles")
    @classmethod
    def _check_quantiles(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("at least one quantile is required")
        for q in value:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile {q} is outside [0, 1]")
        return tuple(sorted(set(value)))

    @field_validator("source_id_pattern")
    @classmethod
    def _check_source_id_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value

    @field_validator("topic_numbers", "topic_sketches", "topic_medians", "topic_dead_letters")
    @classmethod
    def _check_topic_name(cls, value: str) -> str:
        if not value or len(value) > 249 or not set(value) <= _TOPIC_NAME_CHARS or value in {".", ".."}:
            raise ValueError(f"{value!r} is not a legal Kafka topic name")
        return value

    @model_validator(mode="after")
    def _check_topics_distinct(self) -> Settings:
        # Cross-field rules: pydantic cannot pin these on one field, so the message
        # names every setting involved by its environment variable.
        topics = {name: getattr(self, name) for name in _TOPIC_SETTINGS}
        for name, value in topics.items():
            clashing = [_env_name(other) for other, v in topics.items() if v == value and other != name]
            if clashing:
                raise ValueError(
                    f"topic names must be distinct: {_env_name(name)} and {', '.join(clashing)} are both {value!r}"
                )
        if self.heartbeat_ms < self.publish_interval_ms:
            # Silence for one heartbeat marks a shard stale: a heartbeat shorter than the
            # publish interval would mark live shards stale between two records.
            raise ValueError(
                f"{_env_name('heartbeat_ms')}={self.heartbeat_ms} is shorter than "
                f"{_env_name('publish_interval_ms')}={self.publish_interval_ms}; a heartbeat must be at least "
                "one publish interval"
            )
        if self.kafka_sasl_mechanism and not self.kafka_security_protocol.startswith("SASL"):
            raise ValueError(
                f"{_env_name('kafka_sasl_mechanism')}={self.kafka_sasl_mechanism!r} is set but "
                f"kafka_security_protocol is not SASL_* ({_env_name('kafka_security_protocol')}="
                f"{self.kafka_security_protocol!r}; use SASL_PLAINTEXT or SASL_SSL)"
            )
        return self

    @property
    def uses_local_broker(self) -> bool:
        """Whether no bootstrap servers were given, so the embedded local broker is used."""
        return not self.kafka_bootstrap_servers

    @property
    def kafka_timeout_s(self) -> float:
        """How long a command waits for Kafka to answer before it gives up, in seconds."""
        return self.kafka_timeout_ms / 1000

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap servers to connect to (the local broker's when none were given)."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.local_broker_port}"


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the default file, ``DMEDIAN_CONFIG``, the environment and ``overrides``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = _read_toml(DEFAULT_FILE, "default settings")
    sources: dict[str, str] = dict.fromkeys(values, str(DEFAULT_FILE))
    user_file = env.get(f"{ENV_PREFIX}CONFIG")
    if user_file:
        user_values = _read_toml(Path(user_file), f"{ENV_PREFIX}CONFIG")
        values.update(user_values)
        sources.update(dict.fromkeys(user_values, user_file))
    known = set(Settings.model_fields)
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name[len(ENV_PREFIX) :].startswith(_NOT_SETTINGS):
            continue
        setting = name[len(ENV_PREFIX) :].lower()
        if setting not in known:
            raise ConfigError(f"unknown setting {name}={raw!r}; known settings: {', '.join(sorted(known))}")
        values[setting] = raw
        sources[setting] = f"environment variable {name}"
    if "KAFKA_BOOTSTRAP_SERVERS" in env:
        values["kafka_bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        sources["kafka_bootstrap_servers"] = "environment variable KAFKA_BOOTSTRAP_SERVERS"
    for key, value in (overrides or {}).items():
        values[key] = value
        sources[key] = "override"
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, values, sources)) from None


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{what}: file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what}: {path} is not valid TOML: {exc}") from None


def _env_name(setting: str) -> str:
    return "KAFKA_BOOTSTRAP_SERVERS" if setting == "kafka_bootstrap_servers" else f"{ENV_PREFIX}{setting.upper()}"


def _explain(exc: ValidationError, values: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        if not error["loc"]:
            # A cross-field rule: its message names the settings; the input is every
            # setting (secrets included), so it is not echoed.
            lines.append(f"  {error['msg']}")
            continue
        setting = str(error["loc"][0])
        where = sources.get(setting, "settings")
        bad = "***" if setting in _SECRET_SETTINGS else repr(values.get(setting, error.get("input")))
        lines.append(f"  {setting} ({_env_name(setting)}) = {bad} from {where}: {error['msg']}")
    return "\n".join(lines)
