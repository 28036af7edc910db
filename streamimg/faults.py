"""Named crash points for fault-injection tests, enabled by an environment variable.

``STREAMIMG_CRASH_AT=<point>:<n>`` makes the process kill itself with SIGKILL
the n-th time (1-based) it reaches ``<point>``; unset (the default), a crash
point costs one dictionary look-up. Points (see ``streamimg.sinks.checkpoint``):

- ``after_begin``: a transaction is open, nothing produced yet;
- ``after_produce``: every record of the batch is produced and acknowledged, offsets not sent;
- ``before_commit``: offsets sent, ``commit_transaction`` not called;
- ``after_commit``: the transaction is committed, the daemon not told yet;
- ``results_after_images`` (``streamimg.results.sink``): a batch's images are written,
  its database transaction not begun.

This is how Kafka's own transaction tests inject faults: at named points, not
by sleeping and hoping.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_begin", "after_produce", "before_commit", "after_commit")  # the daemon's
RESULTS_POINTS = ("results_after_images",)  # the results sink's
_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("STREAMIMG_CRASH_AT", "")
    if not spec:
        return None
    point, _, n = spec.partition(":")
    if point not in POINTS + RESULTS_POINTS or not n.isdigit() or int(n) < 1:
        raise ValueError(f"STREAMIMG_CRASH_AT={spec!r}: expected <point>:<n> with a point in "
                         f"{POINTS + RESULTS_POINTS} and n >= 1")
    return point, int(n)


_TARGET = _target()


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``STREAMIMG_CRASH_AT`` names this visit of ``name``."""
    if _TARGET is None or _TARGET[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
