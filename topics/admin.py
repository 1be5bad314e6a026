"""Creating and describing topics against a cluster, idempotently.

An existing topic that matches its spec is left alone. One that conflicts (other
partition count, other cleanup policy, ...) is reported, never silently changed:
changing partitions of a keyed topic moves keys, and that is the user's call.

A broker takes at most 10,000 partition records in one CreateTopics or
CreatePartitions request, so a topic with more partitions than
``partitions_per_request`` is created with that many and then grown in steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not re-exported in its stubs
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from pipeline.errors import KafkaUnreachableError, SettingsError
from topics.specs import TopicSpec

__all__ = [
    "PARTITIONS_PER_REQUEST",
    "AdminOptions",
    "TopicConflictError",
    "TopicState",
    "create_topics",
    "creation_requests",
    "describe_topics",
    "grow_in_steps",
    "partition_counts",
]

logger = logging.getLogger(__name__)

PARTITIONS_PER_REQUEST = 5000
"""Partitions created or added per request: half the broker's cap of 10,000 partition records a request."""


@dataclass(frozen=True)
class AdminOptions:
    """How topic operations wait, step and report."""

    timeout_s: float = 30.0
    """Wait for one request's answer (the ``kafka_timeout_ms`` setting)."""
    partitions_per_request: int = PARTITIONS_PER_REQUEST
    """Most partitions one CreateTopics or CreatePartitions request asks for."""
    on_progress: Callable[[str], None] | None = None
    """Told what is being done, one line at a time (the CLI prints it on stderr); else logged."""

    def say(self, message: str) -> None:
        """Report a step."""
        if self.on_progress is not None:
            self.on_progress(message)
        else:
            logger.info("%s", message)


class TopicConflictError(SettingsError):
    """Existing topics do not match their specs; the message lists how, and the settings that choose them."""

    def __init__(self, what: str, states: Iterable[TopicState]) -> None:
        problems = "; ".join(f"topic {s.spec.name!r}: {'; '.join(s.conflicts)}" for s in states if s.conflicts)
        super().__init__(
            f"{what}: {problems}; set numbers_partitions (DMEDIAN_NUMBERS_PARTITIONS) to the cluster's count, or "
            "point DMEDIAN_APP_ID and DMEDIAN_TOPIC_* at other topics"
        )


@dataclass(frozen=True)
class TopicState:
    """A topic as it exists on the cluster."""

    spec: TopicSpec
    """The spec it was compared with."""
    exists: bool
    """Whether the topic exists."""
    partitions: int
    """Its partition count (0 when missing)."""
    config: dict[str, str]
    """Its values of the configs named in the spec (required and tuning)."""

    @property
    def conflicts(self) -> list[str]:
        """How it differs from the spec (empty when it matches or is missing)."""
        if not self.exists:
            return []
        found = []
        if self.partitions != self.spec.partitions:
            found.append(f"partitions: spec {self.spec.partitions}, cluster {self.partitions}")
        for key, wanted in self.spec.config.items():
            if self.config.get(key) != wanted:
                found.append(f"{key}: spec {wanted!r}, cluster {self.config.get(key)!r}")
        return found

    @property
    def untuned(self) -> list[str]:
        """The spec's tuning configs the topic lacks: slower, not wrong (empty when it has them or is missing)."""
        if not self.exists:
            return []
        return [
            f"{key}: tuned {wanted!r}, cluster {self.config.get(key)!r}"
            for key, wanted in self.spec.tuning.items()
            if self.config.get(key) != wanted
        ]


def partition_counts(admin: AdminClient, timeout_s: float = 30.0) -> dict[str, int]:
    """Every topic on the cluster with its partition count (one metadata request)."""
    # All topics' metadata: asking a broker for one missing topic auto-creates it
    # (with one partition) where auto.create.topics.enable is on.
    metadata = admin.list_topics(timeout=timeout_s)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items() if topic.error is None}


def describe_topics(
    admin: AdminClient, specs: Iterable[TopicSpec], options: AdminOptions = AdminOptions()
) -> list[TopicState]:
    """How each spec'd topic stands on the cluster."""
    counts = partition_counts(admin, options.timeout_s)
    states = []
    for spec in specs:
        if spec.name not in counts:
            states.append(TopicState(spec, False, 0, {}))
            continue
        states.append(TopicState(spec, True, counts[spec.name], _configs(admin, spec, options.timeout_s)))
    return states


def create_topics(admin: AdminClient, specs: Iterable[TopicSpec], options: AdminOptions = AdminOptions()) -> list[str]:
    """Create missing topics; raise :class:`TopicConflictError` for mismatching ones.

    Returns the names of the topics created. Safe to run any number of times, and
    concurrently: a topic created meanwhile by someone else counts as existing (and
    is grown to its spec if its creator had not finished stepping).
    """
    states = describe_topics(admin, specs, options)
    if any(s.conflicts for s in states):
        raise TopicConflictError("existing topics do not match their specs (nothing was changed)", states)
    missing = [s.spec for s in states if not s.exists]
    if not missing:
        return []
    step = options.partitions_per_request
    created = []
    for group in creation_requests(missing, step):
        new_topics = []
        for spec in group:
            first = min(spec.partitions, step)
            more = f" of {spec.partitions:,} (then {step:,} more per request)" if first < spec.partitions else ""
            options.say(f"creating topic {spec.name} with {first:,} partition{'s' if first != 1 else ''}{more}")
            new_topics.append(NewTopic(spec.name, num_partitions=first, replication_factor=spec.replication_factor,
                                       config=spec.creation_config))  # fmt: skip
        for name, future in admin.create_topics(new_topics, request_timeout=options.timeout_s).items():
            try:
                future.result(timeout=options.timeout_s)
                created.append(name)
                logger.info("created topic %s", name)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise
    for spec in missing:
        if spec.partitions > step:
            grow_in_steps(admin, spec.name, spec.partitions, options)
    # Re-check: a topic someone else created meanwhile must match too.
    late = describe_topics(admin, missing, options)
    if any(s.conflicts for s in late):
        raise TopicConflictError("topics created meanwhile by another client do not match their specs", late)
    _wait_for_leaders(admin, missing, options.timeout_s)
    return created


def creation_requests(specs: list[TopicSpec], step: int) -> list[list[TopicSpec]]:
    """The topics to create, grouped so that no request asks for more than ``step`` partitions in all.

    The broker's cap counts every topic of a request together: two topics of 5,000 are one too many.
    """
    groups: list[list[TopicSpec]] = []
    total = step
    for spec in specs:
        first = min(spec.partitions, step)
        if total + first > step:
            groups.append([])
            total = 0
        groups[-1].append(spec)
        total += first
    return groups


def grow_in_steps(admin: AdminClient, name: str, partitions: int, options: AdminOptions = AdminOptions()) -> int:
    """Grow topic ``name`` to ``partitions``, at most ``partitions_per_request`` per request; return the count before.

    Someone else growing the same topic at the same time is fine: the count is read
    again and the steps go on from there.
    """
    before = current = _count(admin, name, options)
    while current < partitions:
        target = min(current + options.partitions_per_request, partitions)
        options.say(f"{name}: {current:,} -> {target:,} of {partitions:,} partitions")
        future = admin.create_partitions([NewPartitions(name, target)], request_timeout=options.timeout_s)[name]
        try:
            future.result(timeout=options.timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.INVALID_PARTITIONS):
                raise
            # Another client grew it meanwhile: go on from its count.
        current = _count(admin, name, options, at_least=target)
    return before


def _count(admin: AdminClient, name: str, options: AdminOptions, at_least: int = 0) -> int:
    """The topic's partition count, waiting (within the timeout) until metadata shows ``at_least``."""
    deadline = time.monotonic() + options.timeout_s
    while True:
        count = partition_counts(admin, options.timeout_s).get(name, 0)
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def _wait_for_leaders(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    """Return once every partition of every new topic has a leader.

    A client that reads metadata between creation and leader election sees a topic
    with no usable partitions, and Faust then refuses its tables (changelog with 0
    partitions) until its next metadata refresh, minutes later. The wait restarts
    whenever more partitions got leaders, so thousands of them are not cut short.
    """
    deadline = time.monotonic() + timeout_s
    pending = {spec.name: spec.partitions for spec in specs}
    led_before = -1
    while pending:
        metadata = admin.list_topics(timeout=timeout_s)
        led = 0
        for name, partitions in list(pending.items()):
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                continue
            with_leader = sum(1 for p in topic.partitions.values() if p.leader >= 0)
            led += with_leader
            if len(topic.partitions) == partitions and with_leader == partitions:
                del pending[name]
        if led > led_before:
            deadline, led_before = time.monotonic() + timeout_s, led
        if pending and time.monotonic() > deadline:
            raise KafkaUnreachableError(
                f"topics without leaders after {timeout_s:.0f} s: {', '.join(sorted(pending))}; the brokers are "
                "overloaded or down (the wait is DMEDIAN_KAFKA_TIMEOUT_MS)"
            )
        if pending:
            time.sleep(0.1)


def _configs(admin: AdminClient, spec: TopicSpec, timeout_s: float) -> dict[str, str]:
    wanted = spec.creation_config
    if not wanted:
        return {}
    resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name)
    result = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(timeout=timeout_s)
    return {key: str(entry.value) for key, entry in result.items() if key in wanted}
