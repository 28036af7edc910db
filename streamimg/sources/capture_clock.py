"""Capture clock of a live stream: capture times, frame indices, gaps, and the rate cap.

Used by :func:`streamimg.sources.live.read_live`, whose docstring states the rules:
capture times from the stream's clock anchored at the connection's start, never later
than the decoding, strictly increasing; indices that count the frames a gap estimates
lost; one :class:`~streamimg.codecs.gap.Gap` per outage.
"""

from __future__ import annotations

import logging
import math

from streamimg.codecs.gap import Gap

AHEAD_WARN_MS = 1_000  # a stream clock this far ahead of the wall clock is worth a warning
DEFAULT_PERIOD_MS = 40.0  # 25 fps, when the stream says nothing about its rate
JUMP_PERIODS = 3  # a PTS step longer than this many frame periods is a gap


class Timeline:
    """Capture times, indices and gaps of one stream across its connections.

    ``connect`` at each connection, ``stamp`` for each frame decoded (returns its index,
    capture time in ms and the gap before it, if any), ``drop`` when the connection is
    lost, ``give_up`` for the gap up to now when the reader stops retrying. The rules are
    in :mod:`streamimg.sources.live`'s docstring.
    """

    def __init__(self, stream: str, name: str, log: logging.Logger):
        self.stream, self.name, self.log = stream, name, log
        self.last_ts: int | None = None  # capture time of the last frame decoded, ms
        self.last_index = -1
        self.period_ms: float | None = None
        self.lost = False  # the connection dropped since the last frame

    def connect(self, connect_ms: float, rate) -> None:
        """A new connection, started at wall-clock ``connect_ms``; ``rate`` declared fps."""
        self.base_ms, self.anchor, self.prev_pts, self.prev_now = connect_ms, None, None, None
        self.warned = self.warned_ahead = False
        if self.period_ms is None and rate and 0 < float(rate) <= 1000:
            self.period_ms = 1e3 / float(rate)

    def period(self) -> float:
        """The frame period in ms (at least 1): measured, else declared, else 40."""
        return max(1.0, self.period_ms or DEFAULT_PERIOD_MS)

    def _measure(self, delta_ms: float) -> None:
        if delta_ms > 0:
            self.period_ms = delta_ms if self.period_ms is None else (
                0.9 * self.period_ms + 0.1 * delta_ms)

    def drop(self) -> None:
        """The connection dropped: the next frame's stamp says what was lost."""
        self.lost = self.last_ts is not None

    def stamp(self, pts_s: float | None, now_ms: float) -> tuple[int, int, Gap | None]:
        """``(index, capture ms, gap or None)`` of the next frame decoded, PTS in seconds."""
        if pts_s is None:
            if self.prev_now is not None and now_ms - self.prev_now < JUMP_PERIODS * self.period():
                self._measure(now_ms - self.prev_now)  # arrival spacing: the only clue
            ts = self.prev_now = now_ms
        else:
            if self.anchor is None:
                self.anchor = self.base_ms - pts_s * 1e3
            elif pts_s < self.prev_pts:
                self.log.warning("%s: stream clock went back from %.3f s to %.3f s; capture "
                                 "times re-anchored at the wall clock", self.name,
                                 self.prev_pts, pts_s)
                self.anchor = now_ms - pts_s * 1e3
            elif (delta := (pts_s - self.prev_pts) * 1e3) > JUMP_PERIODS * self.period():
                self.lost = True  # frames missing inside the connection (a stall, a skip)
            else:
                self._measure(delta)
            ahead = self.anchor + pts_s * 1e3 - now_ms
            if ahead > 0:  # a capture cannot be later than its decoding
                if ahead > AHEAD_WARN_MS and not self.warned_ahead:
                    self.log.warning("%s: stream clock %d ms ahead of the wall clock; capture "
                                     "times re-anchored at it", self.name, ahead)
                    self.warned_ahead = True
                self.anchor -= ahead
            self.prev_pts = pts_s
            ts = self.anchor + pts_s * 1e3
        ts = int(ts)
        if self.anchor is None:  # no PTS yet: the first frame with one comes a period later
            self.base_ms = max(self.base_ms, ts + self.period())
        if self.last_ts is not None and ts <= self.last_ts:
            if not self.warned:
                self.log.warning("%s: capture time %d ms is not after the previous frame's "
                                 "(%d ms); clamped to 1 ms after it", self.name, ts, self.last_ts)
                self.warned = True
            ts = self.last_ts + 1
        gap, index = None, self.last_index + 1
        if self.lost:
            period, last = self.period(), self.last_ts
            n = max(0, math.floor((ts - last) / period - 0.5))
            gap = (Gap(self.stream, round(last + period), round(last + n * period), n) if n
                   else Gap(self.stream, last + 1, max(last + 1, ts - 1), 0))
            index += n
            self.lost = False
        self.last_ts, self.last_index = ts, index
        return index, ts, gap

    def give_up(self, now_ms: float) -> Gap | None:
        """The gap from the last frame to ``now_ms``, if a frame period fits in it."""
        if self.last_ts is None:
            return None
        period = self.period()
        if now_ms < self.last_ts + period:
            return None
        return Gap(self.stream, round(self.last_ts + period), int(now_ms),
                   math.floor((now_ms - self.last_ts) / period))


class RateCap:
    """Keeps a frame when its capture time reaches the next slot of a ``1/fps`` grid.

    At most ``fps * T + 2`` frames are kept in any ``T`` seconds of capture time; frames
    are dropped, never waited for. ``fps`` None keeps every frame.
    """

    def __init__(self, fps: float | None):
        self.period = None if fps is None else 1e3 / fps
        self.due: float | None = None

    def keep(self, ts: int) -> bool:
        """Whether the frame captured at ``ts`` (ms) is kept."""
        if self.period is None:
            return True
        if self.due is not None and ts < self.due - 0.1 * self.period:
            return False
        due = (ts if self.due is None else self.due) + self.period
        self.due = due if due > ts else ts + self.period  # behind by a period: resync
        return True
