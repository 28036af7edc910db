"""What a running daemon tells the outside: its counters and its listeners.

:class:`Stats` are the run's counters (written as JSON by ``--stats-file``);
:class:`Listener` is the public hook through which metrics, benchmarks and tests
observe the hot path without touching the daemon's internals.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from streamimg.sinks.checkpoint import Outcome


class Listener:
    """Observes a daemon (metrics, benchmarks, tests): override the methods you need.

    Every method runs on the daemon's poll thread and must return quickly.
    """

    def assigned(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions ``(topic, partition)`` were assigned to this instance."""

    def revoked(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions were revoked (or lost); their work in flight is finished or discarded."""

    def submitted(self, seq: int, frames: int, nbytes: int, ms: float) -> None:
        """Batch ``seq`` of ``frames`` frames (``nbytes`` payload bytes) went to Dask in ``ms``."""

    def outcome(self, outcome: Outcome) -> None:
        """A batch was committed or aborted (``outcome.status``; ``outcome.ms`` its transaction)."""


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counters."""
        return dataclasses.asdict(self)
