"""Declarative topic specs and the admin operations that apply them."""

from topics.specs import TopicSet, TopicSpec, topic_set

__all__ = ["TopicSet", "TopicSpec", "topic_set"]
