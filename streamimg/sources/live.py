"""Frames from live sources (RTSP cameras, live HTTP streams, webcams), reconnecting.

:func:`read_live` reads a live source FFmpeg (inside PyAV) opens: ``rtsp://``,
``http(s)://`` live streams (MPEG-TS, MJPEG multipart, live HLS), ``rtmp``/``srt``/``udp``,
V4L2 webcams (:func:`webcam`). It yields :class:`~streamimg.sources.video.SourceFrame`
items and, for every outage, one :class:`~streamimg.codecs.gap.Gap` just before the first
frame after it. :func:`read_many` reads several cameras at once, one thread each.

Capture times (``timestamp_ms``, ms since the epoch) follow the stream's clock: a
connection's first frame gets the wall-clock time the connection was started (before
FFmpeg's probing, which holds frames back ~1 s), a later one that plus its PTS (x time
base) minus the first's, so a burst keeps its spacing. Corrections, each logged: a frame
is never stamped after the wall-clock time it was decoded (a clock running ahead, e.g.
RTSP's resync on its first RTCP report, moves the anchor back; warned over
``AHEAD_WARN_MS``); a PTS going back (a wrap) re-anchors at the wall clock; a frame stamped
at or before its predecessor, across connections too, is stamped 1 ms after it (warned
once per connection). A frame without a PTS gets the time it was decoded, and so does
every frame of MJPEG over HTTP (``UNTIMED``: FFmpeg invents its PTS at 25 fps).

Indices are positions in the source: every frame decoded counts, kept or dropped by
``frame_step``/``fps``, and a gap counts the frames it estimates lost, so indices never
pretend continuity. ``frame_step`` keeps the frames whose index is a multiple of it.

A gap is never silent. With ``L`` the capture time of the last frame before the outage,
``F`` that of the first after it and ``P`` the frame period (recent PTS spacing, else the
declared rate, else 40 ms), the lost frames are taken at ``L + P, ..., L + nP``, the last
at least half a period before ``F``: ``n = floor((F - L) / P - 1/2)``, the gap is
``Gap(stream, L + P, L + nP, frames=n)`` and ``F``'s index is ``L``'s ``+ n + 1``. If no
period fits (``n = 0``) it is ``Gap(stream, L + 1, max(L + 1, F - 1), frames=0)``. An
outage is a dropped connection, or, inside one, a PTS step over ``JUMP_PERIODS`` periods
(a stalled encoder, a skipped HLS segment, frames lost in RTP). On giving up the reader
yields ``Gap(stream, L + P, now, frames=floor((now - L) / P))`` (if ``now >= L + P``),
then raises :class:`LiveSourceError`.

After a drop (an FFmpeg error, no data for ``timeout_s``, or the end of the stream: for a
live source a drop too) or a failed connection, reconnect attempt ``k`` (counted since
the last frame) waits ``min(max, initial * 2**(k-1))`` s, shortened by up to ``jitter``
of itself (seeded by the URL unless ``seed`` is given: runs repeat). Each attempt is one
line on ``logging.getLogger("streamimg.live")``; the reader gives up when attempt
``max_retries`` failed too. Passwords in URLs are masked in logs and errors.

The clock (capture times, indices, gaps, the ``fps`` cap) is
:mod:`streamimg.sources.capture_clock`, where ``AHEAD_WARN_MS``, ``JUMP_PERIODS`` and
``DEFAULT_PERIOD_MS`` live.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import av

from streamimg.codecs.gap import Gap
from streamimg.sources.capture_clock import RateCap, Timeline
from streamimg.sources.video import SourceFrame

LOG = logging.getLogger("streamimg.live")
UNTIMED = ("mpjpeg", "mjpeg")  # FFmpeg numbers these frames at an assumed 25 fps: no clock
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "rtp", "tcp")
Item = SourceFrame | Gap


class LiveSourceError(ConnectionError):
    """A live source failed and the reader gave up on it.

    Parameters ``(url, attempts, cause)``: ``attempts`` None means ``reconnect=False``.

    Attributes
    ----------
    url : str
        The source, password masked.
    attempts : int
        Reconnect attempts made since the last frame (0 with ``reconnect=False``).
    """

    def __init__(self, url: str, attempts: int | None, cause: str):
        why = ("not reconnecting (reconnect=False)" if attempts is None else
               f"gave up after {attempts} reconnect attempt{'s' * (attempts != 1)}")
        super().__init__(f"live source {url}: {cause}; {why}")
        self.url, self.attempts = url, attempts or 0


def webcam(n: int) -> str:
    """The V4L2 device of webcam ``n`` (``/dev/videoN``), for :func:`read_live`.

    Raises
    ------
    ValueError
        If ``n`` is not an integer >= 0.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"webcam number must be an integer >= 0, got {n!r}")
    return f"/dev/video{n}"


def is_live_source(source: str) -> bool:
    """Whether ``source`` is live by its name: a V4L2 device or a streaming-protocol URL.

    ``rtsp(s)``, ``rtmp(s)``, ``srt``, ``udp``, ``rtp`` and ``tcp`` URLs and ``/dev/video*``
    are; files are not; ``http(s)`` URLs may be either (an MP4 or a live MPEG-TS), so they
    are not, and the caller decides (e.g. a ``--reconnect`` flag).
    """
    scheme, sep, _ = str(source).partition("://")
    return _is_device(source) or bool(sep) and scheme.lower() in LIVE_SCHEMES


def read_live(url: str, *, stream: str | None = None, fps: float | None = None,
              frame_step: int = 1, limit: int | None = None, reconnect: bool = True,
              backoff: tuple[float, float] = (0.5, 30.0), max_retries: int | None = None,
              jitter: float = 0.1, seed: int | str | None = None, timeout_s: float = 10.0,
              options: Mapping[str, str] | None = None,
              stop: threading.Event | None = None,
              clock: Callable[[], float] = time.time,
              log: logging.Logger = LOG) -> Iterator[Item]:
    """Read a live source frame by frame, reconnecting on its own (see the module notes).

    Parameters
    ----------
    url : str
        What FFmpeg opens (``rtsp://``, ``http(s)://``, ...) or a V4L2 device
        ``/dev/videoN`` (opened with FFmpeg's ``v4l2`` input).
    stream : str, optional
        Stream id of the items (default: ``url``, password masked).
    fps : float, optional
        Cap, > 0, in frames per second of capture time: a frame is kept when its capture
        time reaches the next slot of a ``1/fps`` grid (a tenth of a period early counts);
        others are decoded and dropped, never waited for. At most ``fps * T + 2`` frames
        in any ``T`` s; at most ``fps`` in the long run. None keeps all.
    frame_step : int
        Keep only frames whose index is a multiple of it (>= 1), before the ``fps`` cap.
    limit : int, optional
        Stop after this many frames kept (gaps do not count).
    reconnect : bool
        False: the end of the stream ends the reading, an error raises
        :class:`LiveSourceError` (no gap either way).
    backoff : (float, float)
        Initial and maximum wait before a reconnect attempt, s, ``0 <= initial <= max``.
    max_retries : int, optional
        Reconnect attempts without a frame before giving up (None: forever).
    jitter : float
        Fraction in ``[0, 1]`` by which a wait may be shortened at random.
    seed : int or str, optional
        Seed of the jitter (default: ``url``).
    timeout_s : float
        FFmpeg's open and read timeout, s (> 0): no data for this long is a drop.
    options : mapping, optional
        FFmpeg input options (e.g. ``{"rtsp_transport": "tcp"}``, ``{"video_size":
        "1280x720", "input_format": "mjpeg"}`` for a webcam).
    stop : threading.Event, optional
        Set: the reading ends at the next frame or attempt (a backoff wait ends at once).
    clock : callable
        Wall-clock seconds since the epoch (``time.time``), the anchor of capture times.
    log : logging.Logger
        Where attempts, reconnections, gaps and clock corrections are logged.

    Yields
    ------
    SourceFrame or Gap
        Frames (``image`` (h, w, 3) uint8 RGB, ``stream`` set) and gaps.

    Raises
    ------
    ValueError
        At the call, for a bad argument.
    FileNotFoundError
        At the call, if ``url`` is a V4L2 device path that does not exist.
    LiveSourceError
        From the iterator, naming ``url``, when it gives up.
    """
    if frame_step < 1 or (limit is not None and limit < 0):
        raise ValueError(f"frame_step={frame_step} must be >= 1 and limit={limit} >= 0")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps={fps} must be a finite number > 0 (or None)")
    initial, most = backoff
    if not 0 <= initial <= most or not math.isfinite(most):
        raise ValueError(f"backoff={backoff} must be (initial, max) seconds, 0 <= initial <= max")
    if max_retries is not None and max_retries < 0:
        raise ValueError(f"max_retries={max_retries} must be >= 0 (or None)")
    if not 0 <= jitter <= 1 or not timeout_s > 0:
        raise ValueError(f"jitter={jitter} must be in [0, 1] and timeout_s={timeout_s} > 0")
    if _is_device(url) and not os.path.exists(url):
        raise FileNotFoundError(f"webcam {url} does not exist: no V4L2 device there (is a "
                                "camera plugged in, and the device passed to this container?)")
    name = _redact(url)
    return _read(url, name, stream or name, fps, frame_step, limit, reconnect, backoff,
                 max_retries, random.Random(url if seed is None else seed), jitter, timeout_s,
                 dict(options or {}), stop or threading.Event(), clock, log)


def _read(url, name, stream, fps, frame_step, limit, reconnect, backoff, max_retries, rng,
          jitter, timeout_s, options, stop, clock, log) -> Iterator[Item]:
    timeline, cap = Timeline(stream, name, log), RateCap(fps)
    kept = retries = 0  # retries: reconnect attempts since the last frame
    if limit == 0:
        return
    while not stop.is_set():
        connect_ms, cause, delivered = clock() * 1e3, "end of stream", False
        try:
            container = av.open(url, timeout=(timeout_s, timeout_s), options=options,
                                **({"format": "v4l2"} if _is_device(url) else {}))
            with container:
                frames = ()
                if not container.streams.video:
                    cause = "no video stream"
                else:
                    video = container.streams.video[0]
                    timeline.connect(connect_ms, video.average_rate or video.guessed_rate)
                    frames = container.decode(video)
                    timed = container.format.name not in UNTIMED
                for frame in frames:
                    index, ts, gap = timeline.stamp(frame.time if timed else None,
                                                    clock() * 1e3)
                    if gap is not None or (retries and not delivered):
                        log.warning("%s: %s%s", name, f"reconnected at attempt {retries}"
                                    if not delivered else "frames missing", _describe(gap))
                    delivered, retries = True, 0
                    if gap is not None:
                        yield gap
                    if index % frame_step == 0 and cap.keep(ts):
                        yield SourceFrame(index, ts, frame.to_ndarray(format="rgb24"),
                                          stream=stream)
                        kept += 1
                        if limit is not None and kept >= limit:
                            return
                    if stop.is_set():
                        return
        except av.error.ExitError:  # PyAV's interrupt: the open or a read timed out
            cause = f"no data for {timeout_s:g} s"
        except (av.FFmpegError, OSError) as exc:
            cause = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
            cause = cause.replace(url, name)
        if stop.is_set():
            return
        timeline.drop()
        if not reconnect:
            if cause == "end of stream":
                return
            raise LiveSourceError(name, None, cause)
        if max_retries is not None and retries >= max_retries:
            log.error("%s: %s; giving up after %d reconnect attempt(s)", name, cause, retries)
            gap = timeline.give_up(clock() * 1e3)
            if gap is not None:
                yield gap
            raise LiveSourceError(name, retries, cause)
        retries += 1
        delay = min(backoff[1], backoff[0] * 2 ** (retries - 1)) * (1 - jitter * rng.random())
        log.warning("%s: %s (%s); reconnect attempt %d of %s in %.2f s", name,
                    "connection lost" if delivered else "cannot read", cause, retries,
                    "unlimited" if max_retries is None else max_retries, delay)
        stop.wait(delay)


def read_many(cameras: Mapping[str, str], *, queue_size: int = 64,
              **kwargs) -> Iterator[Item]:
    """Read several live sources at once, one thread each, each reconnecting on its own.

    Parameters
    ----------
    cameras : mapping
        ``{stream id: url}``, at least one. Items carry their stream id, ready for
        ``produce_frames(..., stream=None)`` (one producer, key = stream id).
    queue_size : int
        Items buffered for the caller (>= 1). A camera whose items are not taken waits
        (its source then buffers or drops upstream); nothing is dropped here.
    **kwargs
        :func:`read_live` arguments for every camera (not ``stream`` nor ``stop``).

    Yields
    ------
    SourceFrame or Gap
        In arrival order, in order within each stream.

    Raises
    ------
    ValueError, FileNotFoundError
        At the call, as :func:`read_live`, or for no cameras.
    LiveSourceError
        From the iterator when a camera gives up (never with ``max_retries=None``);
        the others are stopped. Closing the iterator stops every thread and waits for
        them up to ``timeout_s`` (a read in progress) + 5 s.
    """
    if not cameras or queue_size < 1:
        raise ValueError(f"need at least one camera and queue_size >= 1, got {len(cameras)} "
                         f"cameras and queue_size={queue_size}")
    stop = threading.Event()
    readers = {sid: read_live(url, stream=sid, stop=stop, **kwargs)
               for sid, url in cameras.items()}
    return _merge(readers, stop, queue_size, kwargs.get("timeout_s", 10.0) + 5.0)


def _merge(readers: dict[str, Iterator[Item]], stop: threading.Event, queue_size: int,
           join_s: float) -> Iterator[Item]:
    items: queue.Queue = queue.Queue(queue_size)

    def put(entry) -> bool:  # False once stopped
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                items.put(entry, timeout=0.1)
                return True
        return False

    def run(reader: Iterator[Item]) -> None:
        try:
            all(put(("item", item)) for item in reader)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            put(("error", exc))
        finally:
            reader.close()
            put(("end", None))

    threads = [threading.Thread(target=run, args=(r,), name=f"streamimg-live-{sid}",
                                daemon=True) for sid, r in readers.items()]
    for t in threads:
        t.start()
    try:
        running = len(threads)
        while running:
            with contextlib.suppress(queue.Empty):
                kind, value = items.get(timeout=0.5)
                if kind == "error":
                    raise value
                running -= kind == "end"
                if kind == "item":
                    yield value
    finally:
        stop.set()
        deadline = time.monotonic() + join_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            LOG.warning("live readers still running after %.0f s: %s", join_s,
                        [t.name for t in threads if t.is_alive()])


def _describe(gap: Gap | None) -> str:
    if gap is None:
        return ""
    return (f"; gap {gap.first_missing_ms}..{gap.last_missing_ms} ms "
            f"({gap.duration_ms} ms, ~{gap.frames} frames lost)")


def _is_device(source: str) -> bool:
    return str(source).startswith("/dev/video")


def _redact(url: str) -> str:
    """``url`` with the password of ``scheme://user:password@host`` masked."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
