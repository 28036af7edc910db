"""What a running daemon tells the outside: counters, listeners, a progress line.

:class:`Stats` are the run's counters (written as JSON by ``--stats-file``);
:class:`Listener` is the public hook through which metrics, benchmarks and tests
observe the hot path without touching the daemon's internals.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamimg.sinks.checkpoint import FinishedBatch, Outcome

if TYPE_CHECKING:
    from streamimg.batching import Batch

TIMINGS_HEADER = "streamimg.timings_ms"
_SOURCE = ("streamimg.source.topic", "streamimg.source.partition", "streamimg.source.offset")


class Listener:
    """Observes a daemon (metrics, benchmarks, tests): override the methods you need.

    Every method runs on the daemon's poll thread and must return quickly.
    """

    def assigned(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions ``(topic, partition)`` were assigned to this instance.

        Never called before the transactional producer is initialised.
        """

    def revoked(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions were revoked (or lost); their work in flight is finished or discarded."""

    def batched(self, seq: int, batch: Batch) -> None:
        """Batch ``seq`` closed and went to Dask (called just before :meth:`submitted`).

        ``batch.frames`` are ``FrameInfo`` (topic, partition, offset, and the header with
        the capture time), ``batch.dead`` the dead letters found while batching. The same
        ``seq`` comes back in :meth:`outcome` as ``outcome.batch.seq``.
        """

    def submitted(self, seq: int, frames: int, nbytes: int, ms: float) -> None:
        """Batch ``seq`` of ``frames`` frames (``nbytes`` payload bytes) went to Dask in ``ms``."""

    def outcome(self, outcome: Outcome) -> None:
        """A batch was committed or aborted (``outcome.status``; ``outcome.ms`` its transaction)."""

    def tick(self, lag: dict[str, int], batches: int, nbytes: int) -> None:
        """The poll loop is alive: called from it about once a second while it runs.

        ``lag`` is :func:`consumer_lag` (records per ``"topic[partition]"``);
        ``batches`` and ``nbytes`` are the batches read and not yet committed and
        their payload bytes.
        """

    def stopped(self, code: int) -> None:
        """The daemon stopped with exit code ``code`` (nothing more will be called)."""


@dataclass
class Stats:
    """Counters of one daemon run (frames, batches, ms), written to ``stats_path``."""

    run: str
    started: float = field(default_factory=time.time)
    frames_in: int = 0
    frames_out: int = 0
    dead_letters: int = 0
    records_out: int = 0
    batches_committed: int = 0
    transactions: int = 0
    batches_aborted: int = 0
    chunks_resubmitted: int = 0
    rebalances: int = 0
    pauses: int = 0
    commit_ms: float = 0.0
    last_commit: float = 0.0
    last_commit_latency_ms: float = 0.0  # batch closed -> its transaction committed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counters."""
        return dataclasses.asdict(self)

    def write(self, path: Path | None) -> None:
        """Write the counters to ``path`` as JSON, atomically (nothing when None)."""
        if path:
            tmp = Path(f"{path}.tmp")
            tmp.write_text(json.dumps(self.to_dict()))
            tmp.replace(path)


def frame_timings(batch: FinishedBatch) -> list[dict[str, float]]:
    """Per-stage ms of each frame of a computed batch, one dict per frame.

    Read from the ``streamimg.timings_ms`` header of its analytics records (the workers
    measure ``decode``, each operator, each analytics stage, ``annotate``, ``encode``);
    a frame written by several analytics sinks counts once; a batch of a topology
    without an analytics sink gives ``[]``.
    """
    seen: set[tuple[bytes, ...]] = set()
    out = []
    for _topic, _key, _value, headers in batch.records:
        h = dict(headers or ())
        raw = h.get(TIMINGS_HEADER)
        source = tuple(h.get(k, b"") for k in _SOURCE)
        if raw is None or source in seen:
            continue
        seen.add(source)
        try:
            out.append({str(k): float(v) for k, v in json.loads(raw).items()})
        except (ValueError, AttributeError, TypeError):
            continue
    return out


def committed_per_partition(batch: FinishedBatch) -> dict[tuple[str, int], int]:
    """Frames of a computed batch whose outputs are in it, per input ``(topic, partition)``.

    Its ``sources`` less those dead-lettered on the workers (a dead letter found while
    batching is no source); the counts sum to ``batch.frames``.
    """
    counts: dict[tuple[str, int], int] = {}
    for f in batch.sources:
        counts[(f.topic, f.partition)] = counts.get((f.topic, f.partition), 0) + 1
    if batch.dead:
        sources = {(f.topic, f.partition, f.offset) for f in batch.sources}
        for d in batch.dead:
            if (d.topic, d.partition, d.offset) in sources:
                counts[(d.topic, d.partition)] -= 1
    return counts


def consumer_lag(consumer: Any) -> dict[str, int]:
    """Records behind the high watermark per assigned partition, ``{"topic[p]": n}``.

    Uses cached watermarks (from fetch responses): the embedded broker's
    ListOffsets("latest") is wrong. Partitions without a position yet are left out.
    """
    lag = {}
    for tp in consumer.assignment():
        try:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            pos = consumer.position([tp])[0].offset
        except Exception:  # noqa: BLE001 - lag is best effort
            continue
        if high >= 0 and pos >= 0:
            lag[f"{tp.topic}[{tp.partition}]"] = max(0, high - pos)
    return lag


class Progress:
    """One INFO line every ``interval_s`` seconds (<= 0: never) from a run's :class:`Stats`."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._last: tuple[float, int, int] | None = None  # (monotonic, frames in, out)
        self._started = time.monotonic()

    def due(self) -> bool:
        """Whether a line is due now."""
        since = self._last[0] if self._last else self._started
        return self.interval_s > 0 and time.monotonic() - since >= self.interval_s

    def line(self, stats: Stats, lag: dict[str, int], batches: int, nbytes: int) -> str:
        """The progress line: frames/s in and out since the last line, lag, work in flight."""
        now = time.monotonic()
        since, fin, fout = self._last or (self._started, 0, 0)
        self._last = (now, stats.frames_in, stats.frames_out)
        span = max(now - since, 1e-9)
        return (f"progress: {(stats.frames_in - fin) / span:.1f} frames/s in, "
                f"{(stats.frames_out - fout) / span:.1f} out; lag {lag or '-'}; {batches} "
                f"batches ({nbytes / 1e6:.0f} MB) in flight; "
                + (f"last commit {stats.last_commit_latency_ms:.0f} ms after its batch closed; "
                   if stats.last_commit else "no commit yet; ")
                + f"{stats.dead_letters} dead letters, {stats.batches_aborted} aborts")
