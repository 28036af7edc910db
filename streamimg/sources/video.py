"""Frames from video files (PyAV, FFmpeg inside the wheel), and a producer.

This is the ingestion side: it reads frames on the machine that has the
video and publishes them as frame messages (``streamimg.codecs.frame``), and the
gaps of live sources (``streamimg.sources.live``) as gap records (``streamimg.codecs.gap``).
Image folders are read by ``streamimg.sources.images``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from confluent_kafka import Producer

from streamimg.admin import produce
from streamimg.codecs.frame import encode_failed_frame, encode_frame
from streamimg.codecs.gap import Gap, encode_gap
from streamimg.config import KafkaConfig


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """One decoded frame: ``image`` (h, w, 3) uint8 RGB; ``timestamp_ms`` since the epoch.

    ``origin`` is the file's URL (image folders); a frame that could not be read has
    ``image`` None and the reason in ``error`` (published as a failed frame record).
    ``stream`` is the frame's stream id when a reader yields several streams.
    """

    index: int
    timestamp_ms: int
    image: np.ndarray | None
    origin: str | None = None
    error: str | None = None
    stream: str | None = None


def read_video(path: str | Path, *, frame_step: int = 1, limit: int | None = None,
               loop: int = 1, start_ms: int | None = None) -> Iterator[SourceFrame]:
    """Decode a video file frame by frame, as RGB uint8.

    Parameters
    ----------
    path : str or Path
        Any container/codec FFmpeg (bundled with PyAV) decodes: a file, or a URL FFmpeg
        opens (``http(s)://`` MP4 or HLS playlist, ``rtsp://``, ...; 10 s network timeout).
    frame_step : int
        Keep every ``frame_step``-th frame (1 keeps all), as the video-analysis
        ancestor's frame step.
    limit : int, optional
        Stop after this many frames kept.
    loop : int
        Read the file this many times (frame indices keep counting).
    start_ms : int, optional
        Capture time of frame 0 in ms since the epoch (now when None); a
        frame's timestamp adds its presentation time.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a URL and does not exist.
    ValueError
        If ``frame_step``/``loop`` < 1, or the file is not a video FFmpeg can open
        (e.g. a text file) or has no video stream; the message names the file.
        Raised by the first ``next()``, before any frame.
    """
    path = path if is_url(path) else Path(path)
    if isinstance(path, Path) and not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    if frame_step < 1 or loop < 1:
        raise ValueError(f"frame_step={frame_step} and loop={loop} must be >= 1")
    start_ms = int(time.time() * 1000) if start_ms is None else start_ms
    kept = seen = 0
    offset_ms = 0.0
    for _ in range(loop):
        container, stream = _open_video(path)
        with container:
            stream.thread_type = "AUTO"
            duration_ms = 0.0
            for frame in container.decode(stream):
                pts_ms = float(frame.time or 0.0) * 1e3
                duration_ms = max(duration_ms, pts_ms)
                if seen % frame_step == 0:
                    yield SourceFrame(kept, start_ms + int(offset_ms + pts_ms),
                                      frame.to_ndarray(format="rgb24"))
                    kept += 1
                    if limit is not None and kept >= limit:
                        return
                seen += 1
            rate = float(stream.average_rate or 25)
            offset_ms += duration_ms + 1e3 / rate


def count_frames(path: str | Path, *, frame_step: int = 1, loop: int = 1,
                 limit: int | None = None) -> int | None:
    """How many frames :func:`read_video` or :func:`.image_frames` yields for these arguments.

    For a video: the frame count its container records (PyAV's ``stream.frames``),
    or, when it records none (Matroska, WebM, ...), its duration in seconds times its
    average frame rate, rounded (an estimate); read ``loop`` times, every
    ``frame_step``-th frame kept (counted across loops, as :func:`read_video` does),
    capped by ``limit``. For a folder: its image files (the suffixes
    :func:`.image_frames` reads, decodable or not) with the same step and cap;
    ``loop`` does not apply. Opens the container's header only: decodes nothing.

    Returns
    -------
    int or None
        The number of frames, or None when the video records neither a frame
        count nor both a duration and a frame rate (e.g. a raw H.264 stream).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``frame_step`` or ``loop`` is < 1, or ``path`` is not a video FFmpeg can
        open or has no video stream.
    """
    from streamimg.sources.folders import IMAGE_SUFFIXES

    path = Path(path)
    if frame_step < 1 or loop < 1:
        raise ValueError(f"frame_step={frame_step} and loop={loop} must be >= 1")
    if path.is_dir():
        files = sum(1 for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        total = math.ceil(files / frame_step)
    elif path.is_file():
        frames = _frames_in_video(path)
        if frames is None:
            return None
        total = math.ceil(frames * loop / frame_step)
    else:
        raise FileNotFoundError(f"{path} does not exist")
    return total if limit is None else max(0, min(total, limit))


def is_url(source: str | Path) -> bool:
    """Whether ``source`` names a URL (``scheme://...``) rather than a local path."""
    return isinstance(source, str) and "://" in source


def _open_video(path: Path | str) -> tuple[av.container.InputContainer, av.video.VideoStream]:
    """``(container, first video stream)``; the caller closes the container.

    Raises
    ------
    ValueError
        If FFmpeg cannot open ``path`` or it has no video stream (the message names it).
    """
    try:
        container = av.open(str(path), timeout=10.0 if is_url(path) else None)
    except av.FFmpegError as exc:
        raise ValueError(f"{path} is not a video FFmpeg can read ({exc})") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream")
    return container, container.streams.video[0]


def _frames_in_video(path: Path) -> int | None:
    """Frames of the first video stream: recorded count, else duration x average rate."""
    container, stream = _open_video(path)
    with container:
        if stream.frames:
            return int(stream.frames)
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            return None
        return round(seconds * float(stream.average_rate)) if stream.average_rate else None


def produce_frames(kafka: KafkaConfig, topic: str, frames: Iterator[SourceFrame | Gap], *,
                   stream: str | None, encoding: str = "raw", partition: int | None = None,
                   on_frame: Callable[[SourceFrame], None] | None = None,
                   stop: Callable[[], bool] | None = None,
                   timeout_s: float = 60.0) -> dict[int, int]:
    """Publish frames as frame messages (key = ``stream``) with an idempotent producer.

    A frame with ``error`` set goes as a failed frame record (``encode_failed_frame``), a
    :class:`~streamimg.codecs.gap.Gap` (a live source's outage) as a gap record in its
    place (value None, headers from ``encode_gap``; ``on_frame`` is not called for it).
    ``stream`` names every record (key and headers) when given; when None each item
    names its own (``.stream``, as ``streamimg.sources.live.read_many`` sets it).

    Every frame taken from ``frames`` is queued and then flushed, also when ``frames``
    raises (the error propagates after the flush) or when ``stop()`` (checked after each
    frame) returns True, which ends the reading early.

    Returns
    -------
    dict
        ``{partition: last offset + 1}`` for what was written: the offsets a
        consumer group must reach to have read everything.

    Raises
    ------
    RuntimeError
        If any delivery failed or did not finish within ``timeout_s``.
    ValueError
        If neither ``stream`` nor an item names the stream (after flushing earlier items).
    """
    producer = Producer({**kafka.producer(), "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5})
    ends: dict[int, int] = {}
    errors: list[str] = []

    def delivered(err, msg):
        if err is not None:
            errors.append(f"frame {msg.headers()}: {err.str()}")
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    try:
        for f in frames:
            name = stream or f.stream
            if not name:
                raise ValueError(f"{f!r:.80} names no stream and produce_frames got none")
            if isinstance(f, Gap):
                value, headers = None, encode_gap(Gap(name, f.first_missing_ms,
                                                      f.last_missing_ms, f.frames))
            elif f.error is not None:
                value, headers = encode_failed_frame(stream=name, index=f.index,
                                                     origin=f.origin or "", error=f.error,
                                                     timestamp_ms=f.timestamp_ms)
            else:
                value, headers = encode_frame(f.image, stream=name, index=f.index,
                                              timestamp_ms=f.timestamp_ms, encoding=encoding)
            kwargs = {} if partition is None else {"partition": partition}
            produce(producer, topic, value=value, key=name.encode(), headers=headers,
                    on_delivery=delivered, **kwargs)
            if on_frame and not isinstance(f, Gap):
                on_frame(f)
            if stop is not None and stop():
                break
    finally:  # what was read is delivered, whatever ended the reading
        if producer.flush(timeout_s) > 0:
            errors.append(f"{len(producer)} frames undelivered after {timeout_s} s")
    if errors:
        raise RuntimeError(f"producing to {topic} failed: {errors[:3]}")
    return ends
