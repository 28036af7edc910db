"""``streamimg produce`` (frames) and ``streamimg produce-pixels`` (pixel messages).

``produce`` publishes frames from three kinds of source with one delivery (idempotent
producer, progress bar, Ctrl-C delivers what was read, a JSON summary on stdout):

- a video file or URL FFmpeg opens (:func:`~streamimg.sources.video.read_video`);
- an image folder, local or any fsspec URL (:func:`~streamimg.sources.folders.image_frames`):
  an unreadable file becomes a failed frame record unless ``--drop-failures``;
- live sources (:func:`~streamimg.sources.live.read_live`): ``rtsp://`` and other
  streaming URLs, ``--webcam N``, ``--reconnect`` for live ``http(s)://`` streams, and
  ``--camera ID=URL`` (repeatable) for several cameras in one process, each reconnecting
  on its own. Every outage becomes a gap record in the stream's place; the summary counts
  them. A camera that gives up (``--max-retries``) ends the run with exit 1 after what was
  read is delivered.
"""

from __future__ import annotations

import json
import os
import posixpath
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path

from streamimg.cli import _connect, _kafka
from streamimg.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CommandError


def cmd_produce(args) -> int:
    """Publish a video file, an image folder (local or an fsspec URL) or live cameras.

    Checks, in order: the source exists and its first frame reads (exit 2), the broker
    answers (exit 4). A folder's file that cannot be read or decoded is published as a
    failed frame record (``encode_failed_frame``: the daemon dead-letters it) and listed as
    ``failed``, or with ``--drop-failures`` skipped and listed as ``skipped``; a warning line
    each. Ctrl-C stops reading; what was read is delivered and summarised (exit 130); a
    second Ctrl-C exits at once. A live camera that gives up: exit 1, after delivery.
    """
    from streamimg.config import check_topic
    from streamimg.sources.live import is_live_source

    kafka = _kafka(args)
    check_topic(args.topic)
    if args.fps is not None and args.fps <= 0:
        raise CommandError(f"--fps {args.fps} must be > 0", "give the most frames a second")
    live = (args.webcam is not None or args.camera or args.reconnect
            or (args.source is not None and is_live_source(args.source)))
    if live:
        return _produce_live(args, kafka)
    if args.source is None:
        raise CommandError("no source given", "give a video file, a folder of images, a URL, "
                                              "--webcam N or --camera ID=URL")
    if args.fps is not None:
        raise CommandError("--fps applies to live sources", "use --frame-step for a file")
    return _produce_file(args, kafka)


def _produce_file(args, kafka) -> int:
    if not 0 < args.sample_ratio <= 1:
        raise CommandError(f"--sample-ratio {args.sample_ratio} is not in (0, 1]",
                           "give the fraction of a folder's files to keep, e.g. 0.25")
    is_folder, name = _image_folder(args.source)
    if not is_folder and (args.recursive or args.sample_ratio != 1):
        raise CommandError(f"{args.source} is a file: --recursive and --sample-ratio apply to "
                           "image folders only", "drop them, or give a folder of images")
    from streamimg.sources.folders import count_images, image_frames
    from streamimg.sources.video import count_frames, read_video

    skipped: list[str] = []

    def skip(path: str, rel: str, reason: str) -> None:
        skipped.append(rel)
        print(f"streamimg produce: skipping {path}: not a readable image ({reason})",
              file=sys.stderr, flush=True)

    listing = {"recursive": args.recursive, "sample_ratio": args.sample_ratio,
               "seed": args.seed, "frame_step": args.frame_step, "limit": args.limit}
    frames = (image_frames(args.source, **listing, keep_failed=not args.drop_failures,
                           on_skip=skip if args.drop_failures else None)
              if is_folder else
              read_video(args.source, frame_step=args.frame_step, limit=args.limit,
                         loop=args.loop))
    try:
        first = next(frames, None)  # before connecting: a text file given as video fails here
    except ValueError as exc:
        raise CommandError(str(exc), "give a video file FFmpeg can read, or a folder of "
                                     "images") from None
    if first is None:
        raise CommandError(f"{args.source} has no frames to publish",
                           "give a folder with .png/.jpg/... images (--recursive for "
                           "sub-folders), or a video")
    _connect(args, kafka)
    try:  # only for the bar: the header's count (or an estimate), or None
        total = (count_images(args.source, **listing) if is_folder else
                 count_frames(args.source, frame_step=args.frame_step, loop=args.loop,
                              limit=args.limit))
    except (OSError, ValueError):
        total = None
    shown = posixpath.basename(args.source.rstrip("/")) or name
    return _deliver(args, kafka, chain([first], frames), args.stream or name, shown, total,
                    lambda: {"skipped": skipped})


def _produce_live(args, kafka) -> int:
    from streamimg.sources.live import LiveSourceError, read_live, read_many, webcam

    if args.recursive or args.sample_ratio != 1 or args.loop != 1:
        raise CommandError("--recursive, --sample-ratio and --loop do not apply to live "
                           "sources", "drop them")
    cameras = dict(_camera(c) for c in args.camera or [])
    if args.webcam is not None:
        cameras.setdefault(args.stream or f"webcam{args.webcam}", webcam(args.webcam))
    if args.source is not None:
        cameras.setdefault(args.stream or _stream_of(args.source), args.source)
    stop = threading.Event()
    options = {"fps": args.fps, "frame_step": args.frame_step, "limit": args.limit,
               "reconnect": True, "max_retries": args.max_retries}
    try:
        if len(cameras) == 1:
            ((stream, url),) = cameras.items()
            items = read_live(url, stream=stream, stop=stop, **options)
        else:
            items = read_many(cameras, **options)
        first = next(items)  # before connecting to Kafka: a camera that never answers fails
    except (ValueError, FileNotFoundError, LiveSourceError, StopIteration) as exc:
        raise CommandError(f"{exc or 'the source ended before its first frame'}",
                           "check the camera's URL or device, and that it is streaming"
                           ) from None
    _connect(args, kafka)
    gaps = 0

    def counted(it: Iterator) -> Iterator:
        nonlocal gaps
        for item in it:
            gaps += not hasattr(item, "image")  # a Gap: no pixels
            yield item

    shown = ", ".join(cameras)
    try:
        return _deliver(args, kafka, counted(chain([first], items)), None, shown, None,
                        lambda: {"gaps": gaps}, stop)
    except LiveSourceError as exc:
        raise CommandError(str(exc), "the frames read before are delivered; restart when "
                                     "the camera is back", EXIT_FAILED) from None


def _deliver(args, kafka, frames: Iterator, stream: str | None, shown: str,
             total: int | None, extra: Callable[[], dict],
             stop: threading.Event | None = None) -> int:
    """Produce ``frames`` with a progress bar; Ctrl-C delivers what was read; summary.

    ``stream`` None: each item names its own (live cameras). ``extra()`` adds to the
    summary when it is printed.
    """
    from streamimg.admin import ensure_topics
    from streamimg.progress import progress_bar
    from streamimg.sources.video import produce_frames

    ensure_topics(kafka, [args.topic], args.partitions)
    progress = progress_bar("frames")
    interrupted = stop or threading.Event()
    failed: list[str] = []

    def on_sigint(signum, frame):
        if interrupted.is_set():
            print("streamimg produce: second Ctrl-C, exiting now; frames still queued are "
                  "not delivered", file=sys.stderr, flush=True)
            if progress.console.is_terminal:
                sys.__stderr__.write("\x1b[?25h\n")  # the live bar hid the cursor
                sys.__stderr__.flush()
            os._exit(EXIT_INTERRUPTED)
        interrupted.set()
        print("streamimg produce: interrupted; delivering the frames read so far "
              "(Ctrl-C again to drop them)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, on_sigint)
    sent = 0

    def advance(frame) -> None:
        nonlocal sent
        if frame.error is None:
            sent += 1
        else:
            failed.append(frame.origin)
            print(f"streamimg produce: {frame.origin}: {frame.error}; published as a failed "
                  f"frame record (frame {frame.index})", file=sys.stderr, flush=True)
        progress.advance(task)

    summary = {"topic": args.topic, "end_offsets": {}, "frames": 0}
    try:
        with progress:
            task = progress.add_task(f"producing {shown} -> {args.topic}", total=total)
            summary["end_offsets"] = produce_frames(
                kafka, args.topic, frames, stream=stream, encoding=args.encoding,
                on_frame=advance, stop=interrupted.is_set)
    finally:
        summary.update(frames=sent, **extra(), failed=failed,
                       interrupted=interrupted.is_set())
        print(json.dumps(summary), flush=True)
    return EXIT_INTERRUPTED if interrupted.is_set() else EXIT_OK


def _camera(text: str) -> tuple[str, str]:
    stream, sep, url = text.partition("=")
    if not sep or not stream or not url:
        raise CommandError(f"--camera {text!r} is not ID=URL", "e.g. --camera door=rtsp://...")
    return stream, url


def _stream_of(url: str) -> str:
    """A stream id for a live URL: its last path component, else its host."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return posixpath.basename(parts.path.rstrip("/")) or parts.hostname or "live"


def _image_folder(source: str) -> tuple[bool, str]:
    """Whether ``source`` (a local path or an fsspec URL) is a folder; and its name.

    Raises
    ------
    CommandError
        If it does not exist, or is a URL that names no folder (exit 2).
    """
    from streamimg.sources.video import is_url

    if not is_url(source):
        path = Path(source)
        if not path.exists():
            raise CommandError(f"no such file or folder: {path}",
                               "give a video file or a folder of images")
        return path.is_dir(), path.stem
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(source)
        is_dir = fs.isdir(root)
        exists = is_dir or fs.exists(root)
    except (ImportError, ValueError) as exc:  # unknown protocol, or its package missing
        raise CommandError(f"cannot open {source}: {exc}",
                           "give a local path or an fsspec URL (file://, memory://, s3://; "
                           "s3 needs the s3fs package)") from None
    if not is_dir:
        raise CommandError(f"no folder at {source}" if not exists else
                           f"{source} is not a folder: only image folders are read from URLs",
                           "give the URL of a folder of images, or a local video file")
    return True, posixpath.basename(root.rstrip("/")) or "images"


def cmd_produce_pixels(args) -> int:
    """Publish an image as pixel messages ``name;frame;x;y;v`` (grey, 0-255), key = name."""
    import numpy as np
    from PIL import Image

    from streamimg.config import check_topic

    kafka = _kafka(args)
    check_topic(args.topic)
    path = Path(args.image)
    if not path.is_file():
        raise CommandError(f"no such image file: {path}", "give an image file Pillow reads")
    try:
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L"), dtype=np.float64)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CommandError(f"{path} is not a readable image ({exc})",
                           "give a PNG, JPEG, BMP, TIFF or WebP file") from None
    _connect(args, kafka)
    from confluent_kafka import Producer

    from streamimg.admin import ensure_topics, produce
    from streamimg.codecs.pixel_frames import frame_to_pixels

    ensure_topics(kafka, [args.topic], args.partitions)
    producer = Producer({**kafka.producer(), "enable.idempotence": True, "linger.ms": 20})
    name = args.name or path.stem
    sent = 0
    for index in range(args.frames):
        for value in frame_to_pixels(name, index, grey, binary=args.binary):
            produce(producer, args.topic, value=value, key=name.encode())
            sent += 1
    if producer.flush(60) > 0:
        raise CommandError(f"{len(producer)} of {sent} records undelivered after 60 s",
                           "check the broker, then send the image again", EXIT_FAILED)
    print(json.dumps({"topic": args.topic, "name": name, "height": grey.shape[0],
                      "width": grey.shape[1], "frames": args.frames, "records": sent}))
    return 0
