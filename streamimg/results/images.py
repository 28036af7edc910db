"""The image store of the results sink: annotated frames as JPEG files, local or fsspec.

Each frame is stored as ``<root>/<analysis>/<topology>/<frame:08d>.jpg``: the same name every
time, so writing a frame again (a replay after a crash) replaces the file instead of adding
one. JPEG frames are stored byte for byte; raw and PNG frames are encoded to JPEG first.
Written files are not fsynced: they survive a process crash, not a power loss.
"""

from __future__ import annotations

import threading
import urllib.parse

import cv2
import fsspec
import numpy as np

from streamimg.codecs.frame import FrameDecodeError, FrameHeader, decode_payload

#: cv2.cvtColor code from a frame's channel order to the BGR that cv2.imencode writes.
_TO_BGR = {"RGB": cv2.COLOR_RGB2BGR, "RGBA": cv2.COLOR_RGBA2BGR, "BGRA": cv2.COLOR_BGRA2BGR,
           "HSV": cv2.COLOR_HSV2BGR, "Lab": cv2.COLOR_Lab2BGR}


def image_name(analysis: str, topology: str, frame: int) -> str:
    """``<analysis>/<topology>/<frame:08d>.jpg``, each part quoted to one safe path segment.

    Stream ids are arbitrary text: ``/``, ``%`` and the like are percent-quoted, and a
    leading dot too (no ``..`` or hidden names), so a stream id cannot leave the store.
    """
    def part(text: str) -> str:
        quoted = urllib.parse.quote(text, safe="")
        return "%2E" + quoted[1:] if quoted.startswith(".") else quoted

    return f"{part(analysis)}/{part(topology)}/{frame:08d}.jpg"


def to_jpeg(header: FrameHeader, payload: bytes | None, quality: int = 90) -> bytes:
    """The JPEG to store for one frame message; the payload itself if it is an RGB/BGR/GRAY JPEG.

    Every payload is decoded and checked against the headers (shape, dtype), so a corrupt
    or mislabelled one is refused. PNG and JPEG are decoded by OpenCV as it stores them
    (BGR); ``decode_payload`` would convert to RGB, 4x the time of the decode here. Raw and
    PNG frames are encoded as the frames sink would: non-uint8 values rounded and clipped
    to 0-255 (uint16: the high byte), converted from their channel order to BGR (alpha
    dropped; HSV and Lab as ``cv2.cvtColor`` defines them).

    Parameters
    ----------
    header : FrameHeader
        From ``parse_header`` of the record's headers.
    payload : bytes
        The record value.
    quality : int
        JPEG quality, 0-100, for re-encoded frames.

    Returns
    -------
    bytes
        A JPEG file of ``header.height`` x ``header.width`` pixels.

    Raises
    ------
    FrameDecodeError
        If the payload is empty or does not decode to the frame the headers describe.
    """
    if header.encoding == "raw":
        frame, order = decode_payload(header, payload), header.order  # a view: no copy
    else:
        frame = None
        if payload:
            try:
                frame = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
            except cv2.error:
                pass
        if frame is None:
            raise FrameDecodeError("payload", f"not a valid {header.encoding} image "
                                   f"({len(payload or b'')} bytes)")
        frame = frame[:, :, None] if frame.ndim == 2 else frame
        if frame.shape != header.shape or frame.dtype != np.dtype(header.dtype):
            raise FrameDecodeError("payload", f"{header.encoding} decodes to {frame.shape} "
                                   f"{frame.dtype}, headers say {header.shape} {header.dtype}")
        if header.encoding == "jpeg" and header.order not in ("HSV", "Lab"):
            return bytes(payload)  # a viewable JPEG already
        order = {"RGB": "BGR", "RGBA": "BGRA"}.get(header.order, header.order)  # as decoded
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    if order in _TO_BGR:
        frame = cv2.cvtColor(frame, _TO_BGR[order])
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise FrameDecodeError("payload", f"OpenCV could not encode {frame.shape} as JPEG")
    return buf.tobytes()


class ImageStore:
    """Annotated frames as files under a root: a local directory or any fsspec URL.

    Parameters
    ----------
    url : str
        ``/path``, ``file:///path``, ``s3://bucket/prefix`` (needs s3fs), ``memory://x``...

    Raises
    ------
    ValueError, ImportError
        From fsspec, for an unknown protocol or one whose package is missing.
    """

    def __init__(self, url: str):
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.local = "file" in ((self.fs.protocol,) if isinstance(self.fs.protocol, str)
                                else self.fs.protocol)
        self._dirs: set[str] = set()

    def put(self, name: str, data: bytes) -> str:
        """Write ``data`` (bytes) at ``name`` under the root, replacing it; return its location.

        Locally the file is written aside and renamed over the old one, so a reader never
        sees half a file; object stores replace objects whole. Returns an absolute path for
        a local store, else the URL.

        Raises
        ------
        OSError
            If the store refuses the write.
        """
        path = f"{self.root}/{name}"
        parent = path.rsplit("/", 1)[0]
        if parent not in self._dirs:
            self.fs.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        if not self.local:
            self.fs.pipe_file(path, data)
            return self.fs.unstrip_protocol(path)
        part = f"{path}.part{threading.get_native_id()}"
        self.fs.pipe_file(part, data)
        self.fs.mv(part, path)
        return path
