"""Frame assembly: pixel messages (``name;frame;x;y;v``) grouped back into frames.

The seed's Flink job kept every pixel as its own record. We assemble pixels
into frames on the daemon, then everything downstream runs on Dask arrays.

Rules (all configurable through :class:`PixelFrames`, all documented in the README):

- Frame size comes from configuration (``height`` x ``width``); a pixel outside
  it is dead-lettered with its coordinates.
- A frame is emitted when all ``height * width`` pixels have arrived, or when
  its window (``window_ms`` after its first pixel arrived) closes. An
  incomplete frame is then either emitted with its missing pixels filled with
  ``fill`` and a mask (``incomplete="mask"``, with a warning naming the
  missing pixel count), or dead-lettered whole as a frame message with NaN
  where pixels are missing (``incomplete="dlq"``). Never silently.
- Duplicated pixels (same frame and coordinates twice while the frame is open):
  the last value wins (``duplicates="last"``) or the first (``"first"``); the
  pixel counts once. A pixel for a frame already emitted is dead-lettered as
  late, unless it is a re-read after a restart (see below).
- Offsets: per partition, the offset that is safe to commit is the lowest
  offset still held by a frame not yet emitted (or the next offset to read).
  With pixels of several frames interleaved in one partition this commits the
  contiguous prefix, so a crash never loses a pixel.
- Never twice: frames emitted whose pixels lie at or past the committed offset
  are listed in a state record committed in the same transaction (see
  ``Checkpoint``). After a restart their re-read pixels are skipped.

Producers should key pixel records by image name so a frame's pixels share a
partition (``frame_to_pixels`` and ``streamimg produce-pixels`` do); frames
spread over partitions owned by different daemon instances cannot assemble.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamimg.batching import Batch, DeadLetter, FrameInfo
from streamimg.codecs.frame import FrameHeader, encode_frame
from streamimg.codecs.pixel import PixelDecodeError, decode_pixel
from streamimg.config import ConfigError
from streamimg.worker import array_block

STATE_VERSION = 1

log = logging.getLogger("streamimg.assembly")


@dataclass(frozen=True)
class PixelFrames:
    """How pixel messages become frames.

    Parameters
    ----------
    height, width : int
        Frame size in pixels (every frame of the topology has it).
    window_ms : int
        An open frame is closed this many ms after its first pixel arrived.
    incomplete : {"mask", "dlq"}
        What happens to a frame closed by its window before it is complete.
    duplicates : {"last", "first"}
        Which value a pixel sent twice keeps.
    fill : float
        Value of missing pixels in a frame emitted with a mask.
    dtype : str
        dtype of assembled frames (values are cast; float64 keeps the seed's doubles).
    max_open_frames : int
        Bound on frames assembling at once (memory: each takes height*width*
        (itemsize + 1) bytes); past it the oldest closes as incomplete.
    remember_closed : int
        Emitted frames remembered to recognise late and re-read pixels.

    Raises
    ------
    ConfigError
        For a non-positive size or bound, or an unknown policy or dtype.
    """

    height: int
    width: int
    window_ms: int = 10_000
    incomplete: str = "mask"
    duplicates: str = "last"
    fill: float = 0.0
    dtype: str = "float64"
    max_open_frames: int = 64
    remember_closed: int = 10_000

    def __post_init__(self) -> None:
        for name in ("height", "width", "window_ms", "max_open_frames", "remember_closed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"PixelFrames.{name}={getattr(self, name)!r} must be an int >= 1")
        if self.incomplete not in ("mask", "dlq"):
            raise ConfigError(f"PixelFrames.incomplete={self.incomplete!r}: 'mask' or 'dlq'")
        if self.duplicates not in ("last", "first"):
            raise ConfigError(f"PixelFrames.duplicates={self.duplicates!r}: 'last' or 'first'")
        if self.dtype not in ("uint8", "uint16", "float32", "float64"):
            raise ConfigError(f"PixelFrames.dtype={self.dtype!r} unsupported")


@dataclass
class _Open:
    topic: str
    values: np.ndarray
    seen: np.ndarray
    opened: float
    timestamp_ms: int
    count: int = 0
    first: dict[int, int] = field(default_factory=dict)  # partition -> lowest offset
    last: dict[int, int] = field(default_factory=dict)   # partition -> highest offset


class PixelAssembler:
    """Assembles pixel messages into frames and decides what offsets are safe to commit.

    Implements the batcher interface the daemon uses (``add``, ``room``,
    ``wait_s``, ``take``, ``drop``, ``restore``). Frames are (height, width, 1)
    arrays of ``config.dtype``; their ``FrameInfo.offset`` is the lowest offset
    of their pixels.
    """

    def __init__(self, config: PixelFrames, max_frames: int, max_wait_ms: int):
        self.config = config
        self.max_frames = max_frames
        self.max_wait_s = max_wait_ms / 1e3
        self._open: OrderedDict[tuple[str, int], _Open] = OrderedDict()
        self._ready: list[tuple[tuple[str, int], _Open]] = []
        self._dead: list[DeadLetter] = []
        self._due_since: float | None = None
        self._next: dict[tuple[str, int], int] = {}  # next offset to read per partition
        # (name, frame) -> {partition: highest offset included}
        self._closed: OrderedDict[tuple[str, int], dict[int, int]] = OrderedDict()
        self.duplicates = 0
        self.skipped = 0

    # -- batcher interface -----------------------------------------------------------

    def room(self) -> int:
        """Messages to ask the consumer for at once."""
        return 10_000

    def wait_s(self) -> float:
        """Seconds until something is due: a batch to hand over or a window to close."""
        now = time.monotonic()
        waits = [0.1]
        if self._due_since is not None:
            waits.append(self.max_wait_s - (now - self._due_since))
        if self._open:
            oldest = next(iter(self._open.values()))
            waits.append(oldest.opened + self.config.window_ms / 1e3 - now)
        return max(0.0, min(waits))

    def add(self, message: Any) -> None:
        """Take one consumed pixel record (a ``confluent_kafka.Message`` without error)."""
        topic, p, offset = message.topic(), message.partition(), message.offset()
        self._next[(topic, p)] = offset + 1
        try:
            px = decode_pixel(message.value() or b"")
        except PixelDecodeError as exc:
            return self._reject(message, str(exc))
        cfg = self.config
        if px.x >= cfg.width or px.y >= cfg.height:
            return self._reject(message, f"pixel (x={px.x}, y={px.y}) outside the configured "
                                         f"{cfg.width}x{cfg.height} frame")
        key = (px.name, px.frame)
        closed = self._closed.get(key)
        if closed is not None:
            if offset <= closed.get(p, -1):
                self.skipped += 1  # re-read after a restart: already in an emitted frame
                return None
            return self._reject(message, f"late pixel for frame {px.name}#{px.frame}, "
                                         "already emitted")
        frame = self._open.get(key)
        if frame is None:
            if len(self._open) >= cfg.max_open_frames:
                self._close_incomplete(*self._open.popitem(last=False),
                                       why=f"more than {cfg.max_open_frames} frames open")
            frame = _Open(topic, np.full((cfg.height, cfg.width), cfg.fill, cfg.dtype),
                          np.zeros((cfg.height, cfg.width), bool), time.monotonic(),
                          message.timestamp()[1])
            self._open[key] = frame
        if frame.seen[px.y, px.x]:
            self.duplicates += 1
            if cfg.duplicates == "last":
                frame.values[px.y, px.x] = px.v
        else:
            frame.seen[px.y, px.x] = True
            frame.values[px.y, px.x] = px.v
            frame.count += 1
        frame.first.setdefault(p, offset)
        frame.last[p] = offset
        if frame.count == cfg.height * cfg.width:
            del self._open[key]
            self._mark_ready(key, frame)
        return None

    def take(self, early: bool = False) -> Batch | None:
        """Hand over assembled frames and dead letters when a batch is due; else None.

        ``early`` (a worker thread idle, nothing more to read): hand over whatever is
        assembled without waiting out ``max_wait_ms``; open windows still wait.
        """
        now = time.monotonic()
        window = self.config.window_ms / 1e3
        while self._open:
            key, oldest = next(iter(self._open.items()))
            if now - oldest.opened < window:
                break
            del self._open[key]
            self._close_incomplete(key, oldest, why=f"window of {self.config.window_ms} ms "
                                                     "closed")
        if self._due_since is None:
            return None
        now = time.monotonic()  # closing windows above may have set _due_since after `now`
        if (not early and len(self._ready) < self.max_frames
                and now - self._due_since < self.max_wait_s):
            return None
        ready, self._ready = self._ready[: self.max_frames], self._ready[self.max_frames:]
        dead, self._dead = self._dead, []
        self._due_since = now if self._ready else None
        taken = Batch([], [], dead, {}, decode=array_block)
        for (name, index), f in ready:
            missing = int(f.values.size - f.count)
            header = FrameHeader(name, index, f.timestamp_ms, self.config.height,
                                 self.config.width, 1, self.config.dtype, "raw", "GRAY")
            p = min(f.first, key=f.first.get)
            info = FrameInfo(f.topic, p, f.first[p], name.encode(), header,
                             mask=None if missing == 0 else ~f.seen)
            taken.frames.append(info)
            taken.payloads.append(f.values[:, :, None])
        taken.original = lambda i: _frame_message(*ready[i][0], ready[i][1])
        taken.offsets = self.safe_offsets()
        taken.states = self._states(taken.offsets)
        return taken

    def drop(self, partitions: set[tuple[str, int]] | None = None) -> None:
        """Forget uncommitted work (of ``partitions``, or all), e.g. on revoke or abort."""
        def hit(f: _Open) -> bool:
            return partitions is None or any((f.topic, p) in partitions for p in f.first)
        self._open = OrderedDict((k, f) for k, f in self._open.items() if not hit(f))
        self._ready = [(k, f) for k, f in self._ready if not hit(f)]
        self._dead = [d for d in self._dead if partitions is not None
                      and (d.topic, d.partition) not in partitions]
        self._next = {} if partitions is None else {
            tp: o for tp, o in self._next.items() if tp not in partitions}
        if partitions is None:
            self._closed.clear()
        if not (self._ready or self._dead):
            self._due_since = None

    def restore(self, partition: int, state: bytes | None) -> None:
        """Load the emitted-frame list committed for ``partition`` (see module docstring).

        Raises
        ------
        ValueError
            If ``state`` is not a state record of this version.
        """
        if not state:
            return
        data = json.loads(state)
        if data.get("v") != STATE_VERSION:
            raise ValueError(f"assembler state version {data.get('v')!r} unsupported")
        for name, index, last in data["closed"]:
            self._closed.setdefault((name, index), {})[partition] = last

    # -- internals ---------------------------------------------------------------------

    def safe_offsets(self) -> dict[tuple[str, int], int]:
        """Per partition, the next offset every earlier pixel of which is in an emitted frame."""
        safe = dict(self._next)
        for f in [*self._open.values(), *(f for _, f in self._ready)]:
            for p, first in f.first.items():
                tp = (f.topic, p)
                safe[tp] = min(safe.get(tp, first), first)
        return safe

    def _states(self, offsets: dict[tuple[str, int], int]) -> dict[int, bytes]:
        out = {}
        for (_, p), safe in offsets.items():
            closed = [[n, i, last[p]] for (n, i), last in self._closed.items()
                      if last.get(p, -1) >= safe]
            out[p] = json.dumps({"v": STATE_VERSION, "closed": closed},
                                separators=(",", ":")).encode()
        return out

    def _mark_ready(self, key: tuple[str, int], frame: _Open) -> None:
        self._closed[key] = dict(frame.last)
        while len(self._closed) > self.config.remember_closed:
            self._closed.popitem(last=False)
        self._ready.append((key, frame))
        if self._due_since is None:
            self._due_since = time.monotonic()

    def _close_incomplete(self, key: tuple[str, int], frame: _Open, why: str) -> None:
        total = frame.values.size
        if self.config.incomplete == "mask":
            # Never silently (the dlq policy's dead letter is logged when it commits).
            log.warning("incomplete frame %s#%d: %d of %d pixels missing (%s; frames are "
                        "%dx%d); emitted with a mask, missing pixels set to %s", key[0], key[1],
                        total - frame.count, total, why, self.config.height, self.config.width,
                        self.config.fill)
            self._mark_ready(key, frame)
            return
        self._closed[key] = dict(frame.last)
        p = min(frame.first, key=frame.first.get)
        k, value, headers = _frame_message(key[0], key[1], frame, nan_missing=True)
        self._dead.append(DeadLetter(
            frame.topic, p, frame.first[p], k, value, headers, "assemble",
            f"incomplete frame {key[0]}#{key[1]}: {total - frame.count} of {total} pixels "
            f"missing ({why})"))
        if self._due_since is None:
            self._due_since = time.monotonic()

    def _reject(self, message: Any, reason: str) -> None:
        self._dead.append(DeadLetter(message.topic(), message.partition(), message.offset(),
                                     message.key(), message.value(),
                                     list(message.headers() or ()), "decode", reason))
        if self._due_since is None:
            self._due_since = time.monotonic()


def _frame_message(name: str, index: int, frame: _Open, nan_missing: bool = False):
    """An assembled (possibly partial) frame as a frame message ``(key, value, headers)``."""
    values = frame.values
    if nan_missing and frame.count < values.size:
        values = values.astype(np.float64)
        values[~frame.seen] = np.nan
    value, headers = encode_frame(values, stream=name, index=index,
                                  timestamp_ms=max(frame.timestamp_ms, 0), order="GRAY")
    return name.encode(), value, headers
