"""Image files out: processed frames written through fsspec, whole or not at all.

The ``to_files`` sink (``streamimg.stream``) writes each frame to a path made from a
template (``{stream}/{frame:06d}.png``) on any fsspec filesystem: a local folder,
``memory://``, ``s3://`` (with ``s3fs``), ... The write happens in the frame's Dask task,
before the batch's transaction commits, so a file may appear for a batch that a crash
then redoes; the redo writes the same path again. A file is never seen half-written: on
a filesystem with rename it is written to a temporary name in the same folder and renamed
over the target (atomic on POSIX), and an object store's PUT replaces an object whole.
Pipelines are deterministic (exactly-once requires it), so the file left is the one of
the committed run: *effectively exactly-once* for the files, exactly-once for Kafka.
Files cannot be rolled back, though: a frame a later stage dead-letters (a stateful
operator in the batch's state task) keeps a file written before it failed.

``streamimg consume --save-dir`` and the demo's pictures use :func:`save_frame_message`.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from streamimg.codecs.frame import decode_payload, parse_header

if TYPE_CHECKING:
    from streamimg.batching import FrameInfo

#: File formats and the suffix each gets when the template has none.
FORMATS = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "webp": ".webp"}
#: dtypes each format stores losslessly (PNG and TIFF keep 16 bits; JPEG and WebP 8).
FORMAT_DTYPES = {"png": ("uint8", "uint16"), "tiff": ("uint8", "uint16"),
                 "jpeg": ("uint8",), "webp": ("uint8",)}
#: Fields a path template may use.
TEMPLATE_FIELDS = ("stream", "frame", "timestamp_ms", "topic", "partition", "offset")
_TO_CV2 = {"RGB": cv2.COLOR_RGB2BGR, "RGBA": cv2.COLOR_RGBA2BGRA}
_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
             ".webp": "webp"}


def format_of(template: str, format: str | None = None) -> str:
    """The file format: ``format``, else the template's suffix.

    Raises
    ------
    ValueError
        If the format is unknown, the suffix names none, or the two disagree.
    """
    suffix = Path(template).suffix.lower()
    if format is None:
        if suffix not in _SUFFIXES:
            raise ValueError(f"cannot tell the image format from {template!r}: give "
                             f"format= one of {sorted(FORMATS)} or a suffix such as .png")
        return _SUFFIXES[suffix]
    if format not in FORMATS:
        raise ValueError(f"format {format!r} not one of {sorted(FORMATS)}")
    if suffix in _SUFFIXES and _SUFFIXES[suffix] != format:
        raise ValueError(f"template {template!r} ends in {suffix} but format is {format!r}")
    return format


def check_template(template: str) -> None:
    """Check a path template: its fields are among :data:`TEMPLATE_FIELDS` and it formats.

    Raises
    ------
    ValueError
        Naming an unknown field or a malformed template.
    """
    sample = dict(stream="s", frame=0, timestamp_ms=0, topic="t", partition=0, offset=0)
    try:
        template.format(**sample)
    except KeyError as exc:
        raise ValueError(f"template {template!r}: unknown field {exc}; use "
                         f"{', '.join(TEMPLATE_FIELDS)}") from None
    except (ValueError, IndexError) as exc:
        raise ValueError(f"template {template!r} is malformed: {exc}") from None
    if "{stream" not in template and "{frame" not in template:
        raise ValueError(f"template {template!r} names neither {{stream}} nor {{frame}}: "
                         "every frame would overwrite the same file")


def frame_path(template: str, info: FrameInfo) -> str:
    """The template filled in for a frame (``info``); the stream id made path-safe.

    A stream id keeps letters, digits, ``-``, ``_`` and ``.``; any other character
    (``/`` included) becomes ``%XX``, and ids made of dots only are encoded whole, so a
    stream id cannot leave the template's folder.
    """
    h = info.header
    return template.format(stream=safe_name(h.stream), frame=h.frame,
                           timestamp_ms=h.timestamp_ms, topic=info.topic,
                           partition=info.partition, offset=info.offset)


def safe_name(name: str) -> str:
    """``name`` as one path component (see :func:`frame_path`)."""
    out = re.sub(r"[^A-Za-z0-9._-]", lambda m: "".join(f"%{b:02X}" for b in
                                                       m.group().encode()), name)
    return out if out.strip(".") else "".join(f"%{ord(c):02X}" for c in out) or "%00"


def image_file(frame: np.ndarray, format: str, order: str | None = None,
               quality: int = 90) -> bytes:
    """A frame as an image file's bytes (``cv2.imencode``), colours as the order says.

    Parameters
    ----------
    frame : numpy.ndarray, shape (h, w, c) with c in 1, 3, 4
        uint8, or uint16 for PNG and TIFF (kept 16-bit).
    format : {"png", "jpeg", "tiff", "webp"}
        The file format.
    order : str, optional
        The frame's channel order (``RGB``, ``BGR``, ``RGBA``, ``BGRA``, ``GRAY``); by
        channel count when None. Files store colour as viewers expect it.
    quality : int
        JPEG and WebP quality, 1-100.

    Raises
    ------
    ValueError
        For a dtype the format cannot store, JPEG with alpha, an order that is not a
        picture (``HSV``, ``Lab``), or a quality outside 1-100.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a (h, w, 1|3|4) frame, got shape {frame.shape}")
    if frame.dtype.name not in FORMAT_DTYPES[format]:
        raise ValueError(f"{format} stores {' or '.join(FORMAT_DTYPES[format])} frames, not "
                         f"{frame.dtype}")
    if order in ("HSV", "Lab"):
        raise ValueError(f"{order} frames are not pictures; convert_color back to RGB first")
    if format == "jpeg" and frame.shape[2] == 4:
        raise ValueError("JPEG has no alpha channel; use png, tiff or webp")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality!r}")
    order = order or {1: "GRAY", 3: "RGB", 4: "RGBA"}[frame.shape[2]]
    image = cv2.cvtColor(frame, _TO_CV2[order]) if order in _TO_CV2 else frame
    params = {"jpeg": [cv2.IMWRITE_JPEG_QUALITY, int(quality)],
              "webp": [cv2.IMWRITE_WEBP_QUALITY, int(quality)]}.get(format, [])
    ok, buf = cv2.imencode(FORMATS[format], image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {frame.shape} {frame.dtype} frame as "
                         f"{format}")
    return buf.tobytes()


def write_whole(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``url`` (any fsspec URL or local path) so it is never seen partly.

    Local files: written to ``.<name>.<random>.tmp`` beside the target and renamed over
    it (``os.replace``). Other filesystems: one ``pipe`` (an object store's PUT is
    atomic; for ``memory://`` a dict assignment). Parent folders are created.

    Raises
    ------
    OSError
        From the filesystem (no permission, disk full, ...).
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if "file" not in fs.protocol and "local" not in fs.protocol:
        fs.pipe_file(path, data)
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def file_records(frame: np.ndarray, info: FrameInfo, *, template: str, format: str,
                 quality: int, storage_options: dict | None = None,
                 order: str | None = None, dry_run: bool = False) -> list:
    """The ``to_files`` sink's builder: write the frame's file; no Kafka records.

    ``dry_run`` (the topology's start-up check): encode, write nothing.

    Raises
    ------
    ValueError, OSError
        As :func:`image_file` and :func:`write_whole` (the frame is dead-lettered).
    """
    path, data = frame_path(template, info), image_file(frame, format, order, quality)
    if not dry_run:
        write_whole(path, data, storage_options)
    return []


def save_frame_message(message: Any, folder: str | Path,
                       template: str = "{stream}_{frame:06d}.png") -> str:
    """Write a frame message (``confluent_kafka.Message``) as an image file; return its URL.

    The format follows the template's suffix; 8- and 16-bit frames go to PNG and TIFF as
    they are, colours in the order the header states.

    Raises
    ------
    ValueError
        If the record is not a valid frame message, or the format cannot store its frame
        (see :func:`image_file`); the message says which.
    """
    from streamimg.batching import FrameInfo

    header = parse_header(message.headers())
    frame = decode_payload(header, message.value())
    info = FrameInfo(message.topic() or "", message.partition() or 0, message.offset() or 0,
                     message.key(), header)
    url = f"{str(folder).rstrip('/')}/{frame_path(template, info)}"
    write_whole(url, image_file(frame, format_of(template), header.order))
    return url
