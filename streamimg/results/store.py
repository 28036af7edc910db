"""Results store: analyses, per-frame results and consumer positions in one SQL database.

SQLAlchemy Core over SQLite (the default, a file) or PostgreSQL, through the same code:
upserts use each dialect's ``INSERT ... ON CONFLICT`` (``sqlalchemy.dialects.sqlite`` /
``sqlalchemy.dialects.postgresql``), chosen by the URL's dialect; other databases are
refused. Tables: see :mod:`streamimg.results.schema`; :meth:`ResultsStore.create` makes
the missing ones.

Exactly-once: :meth:`ResultsStore.apply` writes a batch's rows and the next offsets of the
records they came from in one database transaction, so both are there or neither is; a
consumer that resumes from :meth:`ResultsStore.positions` replays exactly what is missing.
Every write is an upsert keyed by the table's primary key (``(analysis, frame, topology)``
for results), so a replay (or two consumers overlapping during a rebalance) leaves one row
per key; positions never move backwards, and a rejected record counts once.

SQLite runs in WAL mode (readers do not block the writer) and each write transaction starts
with ``BEGIN IMMEDIATE`` (writers queue on ``busy_timeout`` instead of failing on a lock
upgrade). ``synchronous=NORMAL``: a power loss may drop the last transactions, rows and
positions together, which the sink then redoes. WAL needs a local file system.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from sqlalchemy import create_engine, distinct, event, func, make_url, select, update
from sqlalchemy.dialects import postgresql, sqlite

from streamimg.config import ConfigError
from streamimg.results.schema import (
    STATES,
    ImageRow,
    Reject,
    ResultRow,
    StatusRow,
    analyses_table,
    frame_results_table,
    metadata,
    positions_table,
    rejects_table,
)

__all__ = ["STATES", "ImageRow", "Reject", "ResultRow", "ResultsStore", "StatusRow"]


def _sqlite_setup(engine: Any, busy_timeout_ms: int) -> None:
    """WAL, a busy timeout, and BEGIN issued by us (SQLAlchemy's documented pysqlite recipe)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN handling off
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', '')}")


class ResultsStore:
    """The results database: analyses, per-frame results, consumer positions.

    Parameters
    ----------
    url : str
        A SQLAlchemy URL: ``sqlite:///path/results.db`` (the directory must exist) or
        ``postgresql+psycopg://user:pass@host/db``.
    busy_timeout_ms : int
        SQLite only: how long (ms) a write waits for another writer's transaction.

    Raises
    ------
    ConfigError
        (a ValueError) If the URL names a database other than SQLite or PostgreSQL.
    sqlalchemy.exc.ArgumentError, ModuleNotFoundError
        If the URL is malformed or its driver is not installed.
    """

    def __init__(self, url: str, busy_timeout_ms: int = 30_000):
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"results database {make_url(url)!r}: only SQLite and "
                             f"PostgreSQL are supported, not {self.dialect}")
        self.engine = create_engine(url)
        self._insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine, busy_timeout_ms)
        self._writer = self.engine.execution_options(sqlite_begin="IMMEDIATE")

    def create(self) -> None:
        """Create the tables that do not exist yet (existing ones are left as they are)."""
        metadata.create_all(self._writer)

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- analyses ---------------------------------------------------------------------------

    def upsert_analysis(self, id: str, *, keep: Collection[str] = (),  # noqa: A002
                        **fields: Any) -> None:
        """Insert analysis ``id`` or update the given fields of it (others are kept).

        Parameters
        ----------
        id : str
            The analysis id (the stream id of its frames).
        **fields
            Any of ``source`` (str), ``models`` (JSON-serialisable, stored as JSON text),
            ``frame_step`` (int), ``state`` (one of :data:`STATES`), ``frames_ingested``,
            ``frames_done``, ``dead_letters`` (int), ``started``, ``finished`` (float, s
            since the epoch), ``error`` (str).
        keep : collection of str
            Fields of ``fields`` whose stored value, when not NULL, is kept: e.g. a request
            written after its request record was produced keeps a ``state`` that the
            results sink already took from the ingest job's status.

        Raises
        ------
        ValueError
            For an unknown field or state.
        """
        unknown = (set(fields) | set(keep)) - set(analyses_table.c.keys()) - {"id"}
        if unknown:
            raise ValueError(f"unknown analysis fields {sorted(unknown)}")
        if fields.get("state") is not None and fields["state"] not in STATES:
            raise ValueError(f"state {fields['state']!r}: expected one of {STATES}")
        if fields.get("models") is not None:
            fields["models"] = json.dumps(fields["models"])
        a, ins = analyses_table, self._insert(analyses_table).values(id=id, **fields)
        stmt = (ins.on_conflict_do_update(index_elements=[a.c.id], set_={
            k: func.coalesce(a.c[k], ins.excluded[k]) if k in keep else ins.excluded[k]
            for k in fields}) if fields else ins.on_conflict_do_nothing())
        with self._writer.begin() as conn:
            conn.execute(stmt)

    def analysis(self, id: str) -> dict[str, Any] | None:  # noqa: A002
        """Analysis ``id`` as a dict of its columns (``models`` parsed), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(analyses_table).where(analyses_table.c.id == id)) \
                .mappings().first()
        return _analysis(row) if row is not None else None

    def list_analyses(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every analysis (or those in ``state``), by start time (unstarted last), then id."""
        c = analyses_table.c
        query = select(analyses_table).order_by(c.started.is_(None), c.started, c.id)
        if state is not None:
            query = query.where(analyses_table.c.state == state)
        with self.engine.connect() as conn:
            return [_analysis(r) for r in conn.execute(query).mappings()]

    # -- the sink's batch -------------------------------------------------------------------

    def apply(self, rows: Iterable[ResultRow], images: Iterable[ImageRow],
              positions: Mapping[tuple[str, int], int], consumer: str,
              rejects: Iterable[Reject] = (), statuses: Iterable[StatusRow] = ()) -> None:
        """Store one batch and the consumer's next offsets in ONE database transaction.

        Upserts analytics records (``record``, ``timings``, ``timestamp_ms``) and image
        paths (``image``; ``timestamp_ms`` only where none is stored), records ``rejects``
        once each (a new one adds 1 to its analysis's ``dead_letters``), creates the
        ``analyses`` rows that do not exist yet, applies ``statuses`` to them, recounts
        ``frames_done`` (distinct frames with a record) of the analyses in ``rows`` and
        moves ``positions`` forward (a stored next offset is never lowered). Applying the
        same batch again changes nothing.

        Parameters
        ----------
        rows, images : iterables of ResultRow, ImageRow
            Within the batch, a later row for the same ``(analysis, frame, topology)`` wins.
        positions : mapping of (topic, partition) to int
            The next offset to read (last offset of the batch + 1) per partition.
        consumer : str
            The consumer these positions belong to.
        rejects : iterable of Reject
            The batch's records that could not be stored, and dead letters.
        statuses : iterable of StatusRow
            Ingestion status, in record order: the last one of an analysis wins.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            On a database error; the transaction is rolled back, nothing is stored.
        """
        key = lambda r: (r.analysis, r.frame, r.topology)  # noqa: E731
        # One statement must not touch a row twice (PostgreSQL refuses it): dedupe first.
        rows = list({key(r): r for r in rows}.values())
        images = list({key(r): r for r in images}.values())
        rejects = list({(r.topic, r.partition, r.offset): r for r in rejects}.values())
        statuses = list({r.analysis: r for r in statuses}.values())
        ids = sorted({r.analysis for r in (*rows, *images, *statuses)}
                     | {r.analysis for r in rejects if r.analysis is not None})
        fr, ins_fr = frame_results_table, self._insert(frame_results_table)
        pk = [fr.c.analysis, fr.c.frame, fr.c.topology]
        with self._writer.begin() as conn:
            if ids:  # rows for new analyses, then lock them in id order (no deadlocks)
                conn.execute(self._insert(analyses_table).on_conflict_do_nothing(),
                             [{"id": i} for i in ids])
                conn.execute(select(analyses_table.c.id).where(analyses_table.c.id.in_(ids))
                             .order_by(analyses_table.c.id).with_for_update())
            if rows:
                conn.execute(ins_fr.on_conflict_do_update(index_elements=pk, set_={
                    "record": ins_fr.excluded.record, "timings": ins_fr.excluded.timings,
                    "timestamp_ms": ins_fr.excluded.timestamp_ms}), [r._asdict() for r in rows])
            if images:
                conn.execute(ins_fr.on_conflict_do_update(index_elements=pk, set_={
                    "image": ins_fr.excluded.image,
                    "timestamp_ms": func.coalesce(fr.c.timestamp_ms,
                                                  ins_fr.excluded.timestamp_ms)}),
                    [r._asdict() for r in images])
            if statuses:
                self._statuses(conn, statuses)
            new: Counter[str] = Counter()
            for r in rejects:
                stored = conn.execute(self._insert(rejects_table).values(
                    consumer=consumer, **r._asdict()).on_conflict_do_nothing()
                    .returning(rejects_table.c.offset)).first()  # None: known already
                if stored is not None and r.analysis is not None:
                    new[r.analysis] += 1
            for analysis_id, n in sorted(new.items()):
                conn.execute(update(analyses_table).where(analyses_table.c.id == analysis_id)
                             .values(dead_letters=analyses_table.c.dead_letters + n))
            recount = sorted({r.analysis for r in rows})
            if recount:
                done_frames = (select(func.count(distinct(fr.c.frame)))
                               .where(fr.c.analysis == analyses_table.c.id,
                                      fr.c.record.is_not(None))
                               .scalar_subquery())
                conn.execute(update(analyses_table).where(analyses_table.c.id.in_(recount))
                             .values(frames_done=done_frames))
            if positions:
                ins_p = self._insert(positions_table)
                conn.execute(ins_p.on_conflict_do_update(
                    index_elements=["consumer", "topic", "partition"],
                    set_={"next_offset": ins_p.excluded.next_offset},
                    where=ins_p.excluded.next_offset > positions_table.c.next_offset),
                    [{"consumer": consumer, "topic": t, "partition": p, "next_offset": o}
                     for (t, p), o in sorted(positions.items())])

    def _statuses(self, conn: Any, statuses: list[StatusRow]) -> None:
        a, ins = analyses_table, self._insert(analyses_table)
        conn.execute(ins.on_conflict_do_update(index_elements=[a.c.id], set_={
            "state": ins.excluded.state, "frames_ingested": ins.excluded.frames_ingested,
            "error": ins.excluded.error, "finished": ins.excluded.finished,
            **{k: func.coalesce(a.c[k], ins.excluded[k]) for k in ("started", "source",
                                                                     "models")}}),
            [{"id": r.analysis, "state": r.state, "frames_ingested": r.frames_ingested,
              "error": r.error or None, "started": r.updated, "source": r.source,
              "models": r.models, "finished": r.updated if r.state in ("done", "failed")
              else None} for r in statuses])

    # -- queries ----------------------------------------------------------------------------

    def positions(self, consumer: str) -> dict[tuple[str, int], int]:
        """The stored next offsets of ``consumer``, ``{(topic, partition): next_offset}``."""
        c = positions_table.c
        query = select(c.topic, c.partition, c.next_offset).where(c.consumer == consumer)
        with self.engine.connect() as conn:
            return {(t, p): o for t, p, o in conn.execute(query)}

    def results(self, analysis: str, offset: int = 0, limit: int = 100,
                topology: str | None = None) -> list[dict[str, Any]]:
        """A page of an analysis's frame results, in frame order (then topology).

        Parameters
        ----------
        analysis : str
            The analysis id.
        offset, limit : int
            Rows to skip, and at most how many to return (both >= 0).
        topology : str, optional
            Only this topology's rows.

        Returns
        -------
        list of dict
            ``analysis``, ``frame``, ``topology``, ``timestamp_ms`` (ms since the epoch),
            ``record`` (the analytics record parsed, or None before it arrived),
            ``timings`` (``{stage: ms}`` or None) and ``image`` (path or URL of the
            annotated JPEG, or None).

        Raises
        ------
        ValueError
            If ``offset`` or ``limit`` is negative.
        """
        if offset < 0 or limit < 0:
            raise ValueError(f"offset={offset} and limit={limit} must be >= 0")
        query = (select(frame_results_table).where(frame_results_table.c.analysis == analysis)
                 .order_by(frame_results_table.c.frame, frame_results_table.c.topology)
                 .offset(offset).limit(limit))
        if topology is not None:
            query = query.where(frame_results_table.c.topology == topology)
        with self.engine.connect() as conn:
            return [_result(r) for r in conn.execute(query).mappings()]

    def frame_result(self, analysis: str, frame: int,
                     topology: str | None = None) -> dict[str, Any] | None:
        """One frame's result (as in :meth:`results`), or None.

        Without ``topology``, the first topology in name order that has the frame.
        """
        query = (select(frame_results_table).where(frame_results_table.c.analysis == analysis,
                                             frame_results_table.c.frame == frame)
                 .order_by(frame_results_table.c.topology).limit(1))
        if topology is not None:
            query = query.where(frame_results_table.c.topology == topology)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _result(row) if row is not None else None

    def rejects(self, consumer: str | None = None) -> list[dict[str, Any]]:
        """The rejected records (of ``consumer``, or all), by topic, partition and offset."""
        query = select(rejects_table).order_by(rejects_table.c.topic, rejects_table.c.partition,
                                         rejects_table.c.offset)
        if consumer is not None:
            query = query.where(rejects_table.c.consumer == consumer)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


def _analysis(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if out["models"] is not None:
        out["models"] = json.loads(out["models"])
    return out


def _result(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for k in ("record", "timings"):
        if out[k] is not None:
            out[k] = json.loads(out[k])
    return out
