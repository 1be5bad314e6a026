"""Creating and describing topics against a cluster, idempotently.

An existing topic that matches its spec is left alone. One that conflicts (other
partition count, other cleanup policy, ...) is reported, never silently changed:
changing partitions of a keyed topic moves keys, and that is the user's call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not re-exported in its stubs
    AdminClient,
    ConfigResource,
    NewTopic,
)

from topics.specs import TopicSpec

__all__ = ["TopicConflictError", "TopicState", "create_topics", "describe_topics"]

logger = logging.getLogger(__name__)

_TIMEOUT_S = 30.0


class TopicConflictError(RuntimeError):
    """An existing topic does not match its spec."""


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
    """Its values of the configs named in the spec."""

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


def describe_topics(admin: AdminClient, specs: Iterable[TopicSpec]) -> list[TopicState]:
    """How each spec'd topic stands on the cluster."""
    specs = list(specs)
    metadata = admin.list_topics(timeout=_TIMEOUT_S)
    states = []
    for spec in specs:
        topic = metadata.topics.get(spec.name)
        if topic is None or topic.error is not None:
            states.append(TopicState(spec, False, 0, {}))
            continue
        states.append(TopicState(spec, True, len(topic.partitions), _configs(admin, spec)))
    return states


def create_topics(admin: AdminClient, specs: Iterable[TopicSpec]) -> list[str]:
    """Create missing topics; raise :class:`TopicConflictError` for mismatching ones.

    Returns the names of the topics created. Safe to run any number of times, and
    concurrently: a topic created meanwhile by someone else counts as existing.
    """
    states = describe_topics(admin, specs)
    problems = [f"topic {s.spec.name!r}: {'; '.join(s.conflicts)}" for s in states if s.conflicts]
    if problems:
        raise TopicConflictError(
            "existing topics do not match their specs (nothing was changed):\n  " + "\n  ".join(problems)
        )
    missing = [s.spec for s in states if not s.exists]
    if not missing:
        return []
    new_topics = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config=dict(spec.config),
        )
        for spec in missing
    ]
    created = []
    for name, future in admin.create_topics(new_topics, request_timeout=_TIMEOUT_S).items():
        try:
            future.result(timeout=_TIMEOUT_S)
            created.append(name)
            logger.info("created topic %s", name)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise
    # Re-check: a topic someone else created meanwhile must match too.
    late = [s for s in describe_topics(admin, missing) if s.conflicts]
    if late:
        raise TopicConflictError("; ".join(f"topic {s.spec.name!r}: {'; '.join(s.conflicts)}" for s in late))
    _wait_for_leaders(admin, missing)
    return created


def _wait_for_leaders(admin: AdminClient, specs: list[TopicSpec], timeout_s: float = _TIMEOUT_S) -> None:
    """Return once every partition of every new topic has a leader.

    A client that reads metadata between creation and leader election sees a topic
    with no usable partitions, and Faust then refuses its tables (changelog with 0
    partitions) until its next metadata refresh, minutes later.
    """
    deadline = time.monotonic() + timeout_s
    pending = {spec.name: spec.partitions for spec in specs}
    while pending:
        metadata = admin.list_topics(timeout=_TIMEOUT_S)
        for name, partitions in list(pending.items()):
            topic = metadata.topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions \
                    and all(p.leader >= 0 for p in topic.partitions.values()):  # fmt: skip
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"topics without leaders after {timeout_s:.0f} s: {', '.join(sorted(pending))}")
        if pending:
            time.sleep(0.1)


def _configs(admin: AdminClient, spec: TopicSpec) -> dict[str, str]:
    if not spec.config:
        return {}
    resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name)
    result = admin.describe_configs([resource], request_timeout=_TIMEOUT_S)[resource].result(timeout=_TIMEOUT_S)
    return {key: str(entry.value) for key, entry in result.items() if key in spec.config}
