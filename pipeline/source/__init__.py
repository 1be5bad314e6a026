"""Sketch at the source: a library for processes that send snapshots instead of numbers.

``SketchingSource`` keeps a KLL sketch in the caller's process and sends it to
``sketches`` as an edge shard, under the same emission rule as a partition shard.
See :mod:`pipeline.source.sketching` and the README.
"""

from pipeline.core.source_state import SourceOptions
from pipeline.source.sender import SenderMode, SnapshotSender
from pipeline.source.sketching import SketchingSource, SourceError, source_options

__all__ = ["SenderMode", "SketchingSource", "SnapshotSender", "SourceError", "SourceOptions", "source_options"]
