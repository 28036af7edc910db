"""The results database's tables (SQLAlchemy Core) and the rows the sink writes into them.

- ``analyses``: one row per analysis (a video, named by its stream id): request (``source``,
  ``models`` as JSON text, ``frame_step``), ``state`` (``queued``, ``running``, ``done``,
  ``failed``, or NULL for an analysis the results sink met before anyone requested it),
  counters, and times in s since the Unix epoch;
- ``frame_results``: one row per ``(analysis, frame, topology)``: the frame's analytics
  record (JSON text, byte for byte as the topology wrote it), the stage timings of its
  ``streamimg.timings_ms`` header (JSON text, ms) and where its annotated frame is stored
  (``image``, NULL until that frame arrives); either may come first;
- ``positions``: the next Kafka offset to read per ``(consumer, topic, partition)``;
- ``rejects``: records the sink could not store, and dead letters of the topology (topic,
  partition, offset, analysis, reason), one row each, so a replayed record counts once.

``create_all`` makes missing tables only: a changed schema needs a migration (Alembic).
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)

STATES = ("queued", "running", "done", "failed")

metadata = MetaData()

analyses_table = Table(
    "analyses", metadata,
    Column("id", Text, primary_key=True),
    Column("source", Text),
    Column("models", Text),  # JSON
    Column("frame_step", Integer),
    Column("state", Text),
    Column("frames_ingested", Integer, nullable=False, server_default=text("0")),
    Column("frames_done", Integer, nullable=False, server_default=text("0")),
    Column("dead_letters", Integer, nullable=False, server_default=text("0")),
    Column("started", Double),  # s since the epoch
    Column("finished", Double),
    Column("error", Text),
    CheckConstraint("state IS NULL OR state IN ('queued', 'running', 'done', 'failed')",
                    name="analyses_state"),
)

frame_results_table = Table(
    "frame_results", metadata,
    Column("analysis", Text, primary_key=True),
    Column("frame", BigInteger, primary_key=True),
    Column("topology", Text, primary_key=True),
    Column("timestamp_ms", BigInteger),  # capture time, ms since the epoch
    Column("record", Text),  # the JSON analytics record
    Column("timings", Text),  # JSON {stage: ms} of the record's streamimg.timings_ms header
    Column("image", Text),  # path or URL of the annotated frame (JPEG)
)

positions_table = Table(
    "positions", metadata,
    Column("consumer", Text, primary_key=True),
    Column("topic", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
)

rejects_table = Table(
    "rejects", metadata,
    Column("consumer", Text, primary_key=True),
    Column("topic", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("offset", BigInteger, primary_key=True),
    Column("analysis", Text),  # NULL when the record did not say
    Column("reason", Text, nullable=False),
)


class ResultRow(NamedTuple):
    """One frame's analytics record: ``record`` and ``timings`` are JSON text, times in ms."""

    analysis: str
    frame: int
    topology: str
    timestamp_ms: int | None
    record: str
    timings: str | None = None


class ImageRow(NamedTuple):
    """Where one frame's annotated image is stored: ``image`` is a path or URL."""

    analysis: str
    frame: int
    topology: str
    timestamp_ms: int | None
    image: str


class Reject(NamedTuple):
    """A record that could not be stored, and why; ``analysis`` is None if unknown."""

    topic: str
    partition: int
    offset: int
    analysis: str | None
    reason: str


class StatusRow(NamedTuple):
    """The latest status of an analysis's ingestion (the ingest job's status record).

    ``state`` is ``running``, ``done`` or ``failed``; ``frames_ingested`` the frames
    produced so far; ``updated`` the record's time (s since the epoch): it becomes
    ``finished`` for ``done`` and ``failed``, and ``started`` if none is stored.
    ``source`` and ``models`` (JSON text) fill the analysis's request if it has none.
    """

    analysis: str
    state: str
    frames_ingested: int
    error: str | None
    updated: float | None
    source: str | None = None
    models: str | None = None
